//! The container of a process, from its cgroup v2 path (`/proc/PID/cgroup`, line `0::PATH`).
//!
//! Runtimes name a container's cgroup after its id, in one of a few shapes:
//! - docker: `/system.slice/docker-ID.scope` (systemd driver) or `/docker/ID` (cgroupfs);
//! - containerd / CRI: `.../cri-containerd-ID.scope`, `/kubepods/.../podUID/ID`;
//! - CRI-O: `.../crio-ID.scope`;
//! - podman: `.../libpod-ID.scope`, `/libpod_parent/libpod-ID`;
//! - Kubernetes pods: a `pod<UID>` segment (`kubepods-burstable-pod<UID>.slice`, where the
//!   systemd driver writes the UID's dashes as underscores).
//!
//! IDs are 64 lowercase hex digits; anything else is not taken for a container.

/// The owner's cgroup and what it says about a container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// cgroup v2 path of the process, as `/proc/PID/cgroup` shows it (`0::PATH`).
    pub cgroup: Option<String>,
    /// Container id (64 hex digits) parsed from the path; `None` outside a container.
    pub container: Option<String>,
    /// Kubernetes pod UID parsed from the path (with dashes); `None` outside a pod.
    pub pod_uid: Option<String>,
}

/// Reads `/proc/PID/cgroup` and parses it. A process that is gone gives an empty placement.
pub fn of_process(pid: u32) -> Placement {
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()
        .and_then(|text| v2_path(&text).map(str::to_owned));
    match cgroup {
        Some(path) => Placement {
            container: container_id(&path),
            pod_uid: pod_uid(&path),
            cgroup: Some(path),
        },
        None => Placement::default(),
    }
}

/// The cgroup v2 path in a `/proc/PID/cgroup` file: its `0::` line.
pub fn v2_path(cgroup_file: &str) -> Option<&str> {
    cgroup_file.lines().find_map(|l| l.strip_prefix("0::"))
}

/// The container id in a cgroup path: the last segment that names one.
pub fn container_id(path: &str) -> Option<String> {
    path.split('/').rev().find_map(|segment| {
        let segment = segment.strip_suffix(".scope").unwrap_or(segment);
        let id = [
            "docker-",
            "cri-containerd-",
            "crio-",
            "libpod-",
            "containerd-",
        ]
        .iter()
        .find_map(|prefix| segment.strip_prefix(prefix))
        .unwrap_or(segment);
        is_id(id).then(|| id.to_owned())
    })
}

/// The Kubernetes pod UID in a cgroup path.
pub fn pod_uid(path: &str) -> Option<String> {
    path.split('/').find_map(|segment| {
        let segment = segment.strip_suffix(".slice").unwrap_or(segment);
        let start = segment.rfind("pod")?;
        let uid = segment[start + 3..].replace('_', "-");
        is_uuid(&uid).then_some(uid)
    })
}

fn is_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f7b3d1a9c2e8f6b0d5a7c3e1f9b2d4a6c8e0f2b4d6a8c0e2f4b6d8a0c2e4f6b";
    const UID: &str = "5f3c1b2a-8d4e-4f6a-9b1c-2d3e4f5a6b7c";

    fn parse(path: &str) -> (Option<String>, Option<String>) {
        (container_id(path), pod_uid(path))
    }

    #[test]
    fn docker() {
        let id = Some(ID.to_owned());
        assert_eq!(
            parse(&format!("/system.slice/docker-{ID}.scope")),
            (id.clone(), None)
        );
        assert_eq!(parse(&format!("/docker/{ID}")), (id, None));
    }

    #[test]
    fn containerd_and_cri_in_kubernetes() {
        let uid_ = UID.replace('-', "_");
        let systemd = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(parse(&systemd), (Some(ID.to_owned()), Some(UID.to_owned())));
        let cgroupfs = format!("/kubepods/besteffort/pod{UID}/{ID}");
        assert_eq!(
            parse(&cgroupfs),
            (Some(ID.to_owned()), Some(UID.to_owned()))
        );
        let crio = format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-{ID}.scope");
        assert_eq!(parse(&crio), (Some(ID.to_owned()), Some(UID.to_owned())));
        // The pod's own cgroup (its pause container aside): a pod but no container.
        assert_eq!(
            parse(&format!("/kubepods.slice/kubepods-pod{uid_}.slice")),
            (None, Some(UID.to_owned()))
        );
    }

    #[test]
    fn podman() {
        let id = Some(ID.to_owned());
        assert_eq!(
            parse(&format!("/machine.slice/libpod-{ID}.scope")),
            (id.clone(), None)
        );
        let rootless = format!(
            "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
        );
        assert_eq!(parse(&rootless), (id.clone(), None));
        assert_eq!(parse(&format!("/libpod_parent/libpod-{ID}")), (id, None));
    }

    #[test]
    fn hosts_services_and_sessions_are_not_containers() {
        for path in [
            "/",
            "/system.slice/nginx.service",
            "/user.slice/user-1000.slice/session-3.scope",
            "/system.slice/docker.service",
            "/docker/not-an-id",
        ] {
            assert_eq!(parse(path), (None, None), "{path}");
        }
    }

    #[test]
    fn reads_the_v2_line() {
        let file = "12:memory:/x\n1:name=systemd:/y\n0::/system.slice/sshd.service\n";
        assert_eq!(v2_path(file), Some("/system.slice/sshd.service"));
        assert_eq!(v2_path("1:cpu:/\n"), None);
        let me = of_process(std::process::id());
        assert!(me.cgroup.is_some_and(|p| p.starts_with('/')));
    }
}
