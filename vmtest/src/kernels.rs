//! The Debian kernels the matrix boots: pinned packages, downloaded (never installed) through an
//! apt state of their own, unpacked to `vmlinuz` + `config`, cached and re-verified.
//!
//! The cache is `target/vm/` in the workspace by default (`--cache`): `kernels/<name>/{vmlinuz,config,source}` and
//! `busybox`. `source` records the packages and the SHA-256 of the kept `vmlinuz`; a cached kernel
//! is used again only while both still match. apt itself checks each download against the
//! signed archive index.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use xtask_common::{probe_output, run, which};

/// One pinned kernel: a short name, the archive suite, and the packages that hold it.
pub struct Pin {
    pub name: &'static str,
    suite: &'static str,
    packages: &'static [&'static str],
}

/// The kernels the tracer is proven on, oldest first. The mirror drops old ABIs over time:
/// bump a pin with `APT_CONFIG=target/vm/apt/apt.conf apt-cache madison PACKAGE` and check that
/// the download works (an index can list a .deb the mirror no longer has).
pub const PINS: &[Pin] = &[
    Pin {
        name: "5.10",
        suite: "bullseye-security",
        packages: &["linux-image-5.10.0-43-cloud-amd64-unsigned"],
    },
    Pin {
        name: "6.1",
        suite: "bookworm-security",
        packages: &["linux-image-6.1.0-57-cloud-amd64-unsigned"],
    },
    Pin {
        name: "6.12",
        suite: "bookworm-security",
        packages: &["linux-image-6.12.117+deb12-cloud-amd64-unsigned"],
    },
    Pin {
        name: "6.18",
        suite: "trixie-backports",
        packages: &["linux-image-6.18.15+deb13-cloud-amd64"],
    },
    // 7.x is split: the kernel is in linux-binary-*, its config in linux-base-*, its modules
    // in linux-modules-*.
    Pin {
        name: "7.3",
        suite: "trixie-backports",
        packages: &[
            "linux-binary-7.3.4+deb13-cloud-amd64",
            "linux-base-7.3.4+deb13-cloud-amd64",
            "linux-modules-7.3.4+deb13-cloud-amd64",
        ],
    },
];

const BUSYBOX_SUITE: &str = "bookworm";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// The modules the guest loads, in load order: netlink `sock_diag` for TCP (the tracer's owner
/// lookups and `tcp_info`), modules in every Debian cloud kernel. `sock_diag` itself is built in
/// where it is not a module.
pub const MODULES: &[&str] = &["sock_diag", "inet_diag", "tcp_diag"];

/// A kernel ready to boot.
pub struct Kernel {
    pub name: &'static str,
    pub vmlinuz: PathBuf,
    /// The [`MODULES`] this kernel has as modules (`.ko` or `.ko.xz`), in load order.
    pub modules: Vec<PathBuf>,
    /// `package version suite` lines.
    pub source: String,
}

/// The pins named by `names` (all when empty), or an error naming the unknown one.
pub fn select(names: &[String]) -> Result<Vec<&'static Pin>> {
    if names.is_empty() {
        return Ok(PINS.iter().collect());
    }
    names
        .iter()
        .map(|name| {
            PINS.iter().find(|pin| pin.name == name).with_context(|| {
                let known: Vec<_> = PINS.iter().map(|pin| pin.name).collect();
                format!(
                    "no pinned kernel named `{name}`; known: {}",
                    known.join(", ")
                )
            })
        })
        .collect()
}

/// The separate apt state under `cache`: its own sources (only the suites needed), lists and
/// archive cache, so the machine's apt configuration is neither used nor changed.
struct AptState {
    conf: PathBuf,
}

impl AptState {
    fn new(cache: &Path, suites: &[&str]) -> Result<Self> {
        let dir = cache.join("apt");
        fs::create_dir_all(dir.join("lists/partial"))?;
        fs::create_dir_all(dir.join("cache/archives/partial"))?;
        let (main, security) = mirrors()?;
        let mut sources = String::new();
        let mut wanted: Vec<&str> = suites.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        for suite in wanted {
            let uri = if suite.ends_with("-security") {
                &security
            } else {
                &main
            };
            sources.push_str(&format!("deb [signed-by={KEYRING}] {uri} {suite} main\n"));
        }
        fs::write(dir.join("sources.list"), sources)?;
        let conf = dir.join("apt.conf");
        let d = dir.display();
        fs::write(
            &conf,
            format!(
                "Dir::Etc::sourcelist \"{d}/sources.list\";\nDir::Etc::sourceparts \"-\";\n\
                 Dir::State::Lists \"{d}/lists\";\nDir::Cache \"{d}/cache\";\n\
                 Dir::Cache::pkgcache \"\";\nDir::Cache::srcpkgcache \"\";\n\
                 Acquire::GzipIndexes \"true\";\nAcquire::Languages \"none\";\n\
                 Acquire::IndexTargets::deb::DEP-11::DefaultEnabled \"false\";\n\
                 APT::Sandbox::User \"root\";\n"
            ),
        )?;
        let state = Self { conf };
        run(state.apt("apt-get").args(["update", "-qq"])).context("apt-get update (kernels)")?;
        Ok(state)
    }

    fn apt(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("APT_CONFIG", &self.conf);
        cmd
    }

    /// Downloads `package` into `dir` and returns the .deb's path.
    fn download(&self, package: &str, dir: &Path) -> Result<PathBuf> {
        fs::create_dir_all(dir)?;
        run(self
            .apt("apt-get")
            .current_dir(dir)
            .args(["download", "-q", package]))
        .with_context(|| {
            format!(
                "downloading {package} (a 404 means the index lists a .deb the mirror no \
                 longer has: pin another ABI in vmtest/src/kernels.rs)"
            )
        })?;
        // `NAME/SUITE` names the suite; the file is `NAME_VERSION_ARCH.deb`.
        let name = package.split('/').next().unwrap_or(package);
        let prefix = format!("{}_", name.replace('+', "%2b"));
        let plain = format!("{name}_");
        fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                (name.starts_with(&prefix) || name.starts_with(&plain)) && name.ends_with(".deb")
            })
            .with_context(|| {
                format!(
                    "{package}: apt-get download left no .deb in {}",
                    dir.display()
                )
            })
    }
}

/// The archive and security mirrors the machine's apt sources name (one-line and deb822
/// formats alike), overridable with `DEBIAN_MIRROR` / `DEBIAN_SECURITY_MIRROR`.
fn mirrors() -> Result<(String, String)> {
    let targets = probe_output(Command::new("apt-get").env_remove("APT_CONFIG").args([
        "indextargets",
        "--no-release-info",
        "--format",
        "$(REPO_URI) $(RELEASE)",
    ]))
    .unwrap_or_default();
    let find = |security: bool| {
        targets.lines().find_map(|line| {
            let (uri, suite) = line.split_once(' ')?;
            (suite.ends_with("-security") == security).then(|| uri.to_owned())
        })
    };
    let main = std::env::var("DEBIAN_MIRROR").ok().or_else(|| find(false)).context(
        "no Debian archive in the machine's apt sources: set DEBIAN_MIRROR to a Debian mirror URI",
    )?;
    let security = std::env::var("DEBIAN_SECURITY_MIRROR")
        .ok()
        .or_else(|| find(true))
        .unwrap_or_else(|| {
            main.trim_end_matches('/')
                .replace("/debian", "/debian-security")
        });
    Ok((main, security))
}

/// Kernels and a static busybox, fetched when missing or no longer matching their pin.
pub fn fetch(pins: &[&'static Pin], cache: &Path) -> Result<(Vec<Kernel>, PathBuf)> {
    for tool in ["apt-get", "dpkg-deb"] {
        if which(tool).is_none() {
            bail!("`{tool}` is missing: vm-test downloads Debian kernel packages and needs apt");
        }
    }
    let busybox = cache.join("busybox/bin/busybox");
    let stale: Vec<&&Pin> = pins
        .iter()
        .filter(|pin| cached(pin, cache).is_none())
        .collect();
    if !stale.is_empty() || !busybox.is_file() {
        let mut suites: Vec<&str> = stale.iter().map(|pin| pin.suite).collect();
        suites.push(BUSYBOX_SUITE);
        let apt = AptState::new(cache, &suites)?;
        let debs = cache.join("debs");
        for pin in stale {
            unpack(pin, &apt, &debs, cache)?;
        }
        if !busybox.is_file() {
            let deb = apt
                .download(&format!("busybox-static/{BUSYBOX_SUITE}"), &debs)
                .or_else(|_| apt.download("busybox-static", &debs))?;
            run(Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(cache.join("busybox")))?;
            fs::remove_file(deb)?;
        }
    }
    let kernels = pins
        .iter()
        .map(|pin| {
            cached(pin, cache).with_context(|| {
                format!("kernel {} is not in the cache after fetching it", pin.name)
            })
        })
        .collect::<Result<_>>()?;
    Ok((kernels, busybox))
}

/// The cached kernel for `pin`, if its record names the pinned packages and its `vmlinuz`
/// still has the recorded hash.
fn cached(pin: &'static Pin, cache: &Path) -> Option<Kernel> {
    let dir = cache.join("kernels").join(pin.name);
    let source = fs::read_to_string(dir.join("source")).ok()?;
    let vmlinuz = dir.join("vmlinuz");
    let packages: Vec<&str> = source
        .lines()
        .filter(|l| !l.starts_with("sha256 ") && !l.starts_with("module "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let hash = source.lines().find_map(|l| l.strip_prefix("sha256 "))?;
    // Each kept module is recorded as `module FILE SHA256`; a cache from before modules were
    // kept has none and is fetched again.
    let mut modules = Vec::new();
    for line in source.lines().filter_map(|l| l.strip_prefix("module ")) {
        let (file, hash) = line.split_once(' ')?;
        let path = dir.join("modules").join(file);
        if sha256(&path).ok()? != hash {
            return None;
        }
        modules.push(path);
    }
    let has_diag = modules
        .iter()
        .any(|m| m.to_string_lossy().contains("/tcp_diag.ko"));
    (packages == pin.packages && has_diag && sha256(&vmlinuz).ok()? == hash).then_some(Kernel {
        name: pin.name,
        vmlinuz,
        modules,
        source,
    })
}

/// Copies the [`MODULES`] found in the unpacked packages at `tmp` into `dir/modules` as they are
/// (`.ko`, or `.ko.xz` from 6.12 on, which the guest's busybox decompresses), and records each
/// one's hash.
fn keep_modules(tmp: &Path, dir: &Path, source: &mut String) -> Result<()> {
    let mut found: Vec<PathBuf> = Vec::new();
    for root in ["lib/modules", "usr/lib/modules"] {
        let Ok(versions) = fs::read_dir(tmp.join(root)) else {
            continue;
        };
        for version in versions.filter_map(Result::ok) {
            for sub in ["kernel/net/core", "kernel/net/ipv4"] {
                let Ok(files) = fs::read_dir(version.path().join(sub)) else {
                    continue;
                };
                found.extend(files.filter_map(Result::ok).map(|f| f.path()));
            }
        }
    }
    fs::create_dir_all(dir.join("modules"))?;
    for name in MODULES {
        let Some(path) = found.iter().find(|p| {
            p.file_name().is_some_and(|f| {
                let f = f.to_string_lossy();
                f == format!("{name}.ko") || f == format!("{name}.ko.xz")
            })
        }) else {
            continue;
        };
        let file = path.file_name().context("a module file")?;
        let to = dir.join("modules").join(file);
        fs::copy(path, &to)?;
        source.push_str(&format!(
            "module {} {}\n",
            file.to_string_lossy(),
            sha256(&to)?
        ));
    }
    Ok(())
}

fn sha256(path: &Path) -> Result<String> {
    let out = probe_output(Command::new("sha256sum").arg(path))
        .with_context(|| format!("sha256sum {}", path.display()))?;
    Ok(out.split_whitespace().next().unwrap_or_default().to_owned())
}

fn unpack(pin: &Pin, apt: &AptState, debs: &Path, cache: &Path) -> Result<()> {
    let dir = cache.join("kernels").join(pin.name);
    let tmp = cache.join("kernels").join(format!(".unpack-{}", pin.name));
    let _ = fs::remove_dir_all(&tmp);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let mut source = String::new();
    for package in pin.packages {
        let deb = apt.download(package, debs)?;
        let fields = probe_output(
            Command::new("dpkg-deb")
                .arg("-f")
                .arg(&deb)
                .args(["Package", "Version"]),
        )
        .unwrap_or_default();
        let version = fields
            .lines()
            .find_map(|l| l.strip_prefix("Version: "))
            .unwrap_or("?");
        source.push_str(&format!("{package} {version} {}\n", pin.suite));
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
        fs::remove_file(deb)?;
    }
    // bullseye..trixie 6.x: boot/vmlinuz-VER, boot/config-VER; 7.x: usr/lib/modules/VER/{vmlinuz,config}.
    let find = |stem: &str| -> Result<PathBuf> {
        let boot = tmp.join("boot");
        let in_boot = fs::read_dir(&boot)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{stem}-")))
            });
        let in_modules = fs::read_dir(tmp.join("usr/lib/modules"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path().join(stem))
            .find(|p| p.is_file());
        in_boot
            .or(in_modules)
            .with_context(|| format!("no {stem} in the packages of kernel {}", pin.name))
    };
    fs::copy(find("vmlinuz")?, dir.join("vmlinuz"))?;
    fs::copy(find("config")?, dir.join("config"))?;
    source.push_str(&format!("sha256 {}\n", sha256(&dir.join("vmlinuz"))?));
    keep_modules(&tmp, &dir, &mut source)?;
    fs::remove_dir_all(&tmp)?;
    fs::write(dir.join("source"), source)?;
    eprintln!("kernel {}: cached in {}", pin.name, dir.display());
    Ok(())
}
