//! The report's charts, drawn by plotters on its SVG backend, each with a text alternative.
//! Every chart is bounded in size whatever the input: the pile-up has [`BINS`] time bins and at
//! most [`SERIES`] process lines, the Gantt at most [`GANTT_ROWS`] rows.

use std::collections::{BTreeMap, HashSet};

use plotters::{
    coord::{ranged1d::SegmentValue, Shift},
    element::DashedPathElement,
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use super::{
    collect::{Collector, Interval, Reason, DWELL_BUCKETS},
    words,
};
use crate::{
    event::TcpState,
    record::{AnalysisRecord, TimelineRecord},
    sink::Sink,
    timeline::Outcome,
};

/// Time bins of the pile-up chart.
pub const BINS: usize = 240;
/// Process lines in the pile-up chart; the other processes are summed into one line.
pub const SERIES: usize = 6;
/// Rows of the Gantt chart.
pub const GANTT_ROWS: usize = 24;

type DrawResult = Result<(), DrawingAreaErrorKind<std::io::Error>>;

/// A rendered chart: the SVG, one paragraph saying what it shows, and the numbers as a table.
pub struct Figure {
    pub svg: String,
    pub alt: String,
    pub table: String,
}

fn font(px: f64) -> TextStyle<'static> {
    TextStyle::from(("sans-serif", px * 1.24).into_font())
}

const LINE_COLORS: [RGBColor; SERIES + 1] = [
    RGBColor(192, 40, 40),
    RGBColor(31, 95, 191),
    RGBColor(46, 125, 50),
    RGBColor(123, 63, 160),
    RGBColor(200, 110, 0),
    RGBColor(0, 130, 140),
    RGBColor(110, 110, 110),
];

/// Dash and gap of each process line, so lines differ without colour.
const DASHES: [(u32, u32); SERIES + 1] = [(1, 0), (8, 4), (3, 3), (12, 3), (6, 2), (2, 6), (4, 8)];

pub fn state_color(state: TcpState) -> RGBColor {
    match state {
        TcpState::Established => RGBColor(76, 160, 80),
        TcpState::SynSent | TcpState::SynRecv | TcpState::NewSynRecv => RGBColor(140, 190, 230),
        TcpState::FinWait1 | TcpState::FinWait2 => RGBColor(60, 110, 200),
        TcpState::CloseWait => RGBColor(205, 40, 40),
        TcpState::LastAck => RGBColor(240, 150, 40),
        TcpState::Closing => RGBColor(150, 90, 180),
        TcpState::TimeWait => RGBColor(170, 170, 170),
        TcpState::Listen => RGBColor(0, 140, 150),
        TcpState::Close | TcpState::Unknown(_) => RGBColor(90, 90, 90),
    }
}

/// Short state names for bar labels.
fn short(state: TcpState) -> String {
    match state {
        TcpState::Established => "ESTAB".into(),
        TcpState::CloseWait => "CLOSE_WAIT".into(),
        other => other.name().into_owned(),
    }
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// One line of the pile-up: a process (or the rest), its peak per bin.
struct Series {
    name: String,
    peaks: Vec<u32>,
    sockets: u64,
    crossings: Vec<u32>,
}

/// The most sockets in CLOSE_WAIT at once in each bin of `[t0, t0 + bins * width)`.
fn peaks(intervals: &[&Interval], t0: u64, width: u64, end: u64) -> Vec<u32> {
    let mut events: Vec<(u64, i64)> = Vec::with_capacity(intervals.len() * 2);
    for i in intervals {
        events.push((i.start.max(t0), 1));
        events.push((i.end.unwrap_or(end).max(i.start.max(t0)), -1));
    }
    // At equal times a socket leaves before the next one enters.
    events.sort_unstable();
    let mut out = vec![0u32; BINS];
    let (mut cur, mut next) = (0i64, 0usize);
    for (b, slot) in out.iter_mut().enumerate() {
        let bin_end = t0.saturating_add(width.saturating_mul(b as u64 + 1));
        let mut peak = cur;
        while next < events.len() && (events[next].0 < bin_end || b + 1 == BINS) {
            cur += events[next].1;
            peak = peak.max(cur);
            next += 1;
        }
        *slot = u32::try_from(peak.max(0)).unwrap_or(u32::MAX);
    }
    out
}

/// Sockets in CLOSE_WAIT over the capture, per holding process, with the instants sockets
/// crossed the threshold. `None` when no socket entered CLOSE_WAIT.
pub fn pileup<S: Sink>(c: &Collector<S>, a: &AnalysisRecord) -> Option<Figure> {
    let t0 = c.start_ns();
    let crossed = |members: &[usize]| -> Vec<u64> {
        a.close_wait
            .iter()
            .filter(|f| {
                let key = (f.pid, f.comm.clone());
                members.iter().any(|&p| c.processes[p] == key)
            })
            .map(|f| {
                f.since_ns
                    .map_or(t0, |s| s.saturating_add(a.close_wait_threshold_ns))
            })
            .collect()
    };
    let watched = Watched {
        state: TcpState::CloseWait,
        threshold_ns: a.close_wait_threshold_ns,
    };
    pile_figure(c, a, &c.intervals, &watched, &crossed)
}

/// The same for a state watched with `--stuck` (its `pile`), the crossings being its `stuck`
/// reports. `None` when no socket entered the state.
pub fn stuck_pileup<S: Sink>(
    c: &Collector<S>,
    a: &AnalysisRecord,
    state: TcpState,
    pile: &super::collect::Pile,
) -> Option<Figure> {
    let crossed = |members: &[usize]| -> Vec<u64> {
        pile.reports
            .iter()
            .filter(|(_, p)| members.contains(&(*p as usize)))
            .map(|(ts, _)| *ts)
            .collect()
    };
    let watched = Watched {
        state,
        threshold_ns: pile.threshold_ns,
    };
    pile_figure(c, a, &pile.intervals, &watched, &crossed)
}

/// The state a pile-up chart is about, and its threshold.
struct Watched {
    state: TcpState,
    threshold_ns: u64,
}

fn pile_figure<S: Sink>(
    c: &Collector<S>,
    a: &AnalysisRecord,
    intervals: &[Interval],
    watched: &Watched,
    crossed: &dyn Fn(&[usize]) -> Vec<u64>,
) -> Option<Figure> {
    if intervals.is_empty() {
        return None;
    }
    let t0 = c.start_ns();
    let end = a.end_ts_ns.max(c.last_ns).max(t0 + 1);
    let width = (end - t0).div_ceil(BINS as u64).max(1);
    // Processes by time spent in the state, most first.
    let mut weight = vec![0u128; c.processes.len()];
    let mut sockets = vec![0u64; c.processes.len()];
    for i in intervals {
        let p = i.process as usize;
        weight[p] += u128::from(i.end.unwrap_or(end).saturating_sub(i.start));
        sockets[p] += 1;
    }
    let mut order: Vec<usize> = (0..c.processes.len()).collect();
    order.sort_by(|&x, &y| weight[y].cmp(&weight[x]).then(x.cmp(&y)));
    let shown: Vec<usize> = order.iter().copied().take(SERIES).collect();
    let rest: HashSet<usize> = order.iter().copied().skip(SERIES).collect();
    let label = |p: usize| {
        let (pid, comm) = &c.processes[p];
        words::owner_short(*pid, comm.as_deref())
    };
    let bin_of = |ns: u64| (ns.saturating_sub(t0) / width).min(BINS as u64 - 1) as usize;
    let mut series: Vec<Series> = Vec::new();
    let mut groups: Vec<(String, Vec<usize>)> =
        shown.iter().map(|&p| (label(p), vec![p])).collect();
    if !rest.is_empty() {
        groups.push((
            format!("{} other processes", rest.len()),
            rest.iter().copied().collect(),
        ));
    }
    for (name, members) in groups {
        let set: HashSet<u32> = members.iter().map(|&p| p as u32).collect();
        let mine: Vec<&Interval> = intervals
            .iter()
            .filter(|i| set.contains(&i.process))
            .collect();
        let mut crossings = vec![0u32; BINS];
        for at in crossed(&members) {
            crossings[bin_of(at)] += 1;
        }
        series.push(Series {
            name,
            peaks: peaks(&mine, t0, width, end),
            sockets: members.iter().map(|&p| sockets[p]).sum(),
            crossings,
        });
    }
    let all: Vec<&Interval> = intervals.iter().collect();
    let total = peaks(&all, t0, width, end);
    let mut svg = String::new();
    draw_pileup(&mut svg, &series, &total, watched, width).ok()?;
    Some(Figure {
        alt: pileup_alt(&series, &total, width, watched),
        table: pileup_table(&series, width, watched),
        svg,
    })
}

fn draw_pileup(
    svg: &mut String,
    series: &[Series],
    total: &[u32],
    watched: &Watched,
    width: u64,
) -> DrawResult {
    let state = watched.state.name();
    let root = SVGBackend::with_string(svg, (960, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let x_max = secs(width * BINS as u64);
    // Headroom above the data for the legend (one line per series, the total and the marker).
    let legend_lines = series.len() as f64 + 2.0;
    let y_max = f64::from(total.iter().copied().max().unwrap_or(1).max(1))
        * (1.1 + 0.1 * legend_lines)
        + 0.5;
    let mut chart = ChartBuilder::on(&root)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the capture started")
        .y_desc(format!("sockets in {state} (peak per bin)"))
        .y_label_formatter(&|v| {
            if v.fract() == 0.0 {
                format!("{v:.0}")
            } else {
                String::new()
            }
        })
        .label_style(font(12.0))
        .axis_desc_style(font(12.0))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    let step = |v: &[u32]| -> Vec<(f64, f64)> {
        let mut pts = Vec::with_capacity(v.len() * 2);
        for (b, &n) in v.iter().enumerate() {
            pts.push((secs(width * b as u64), f64::from(n)));
            pts.push((secs(width * (b as u64 + 1)), f64::from(n)));
        }
        pts
    };
    if series.len() > 1 {
        chart
            .draw_series(LineSeries::new(step(total), BLACK.stroke_width(3)))?
            .label("all processes")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], BLACK.stroke_width(3)));
    }
    for (i, s) in series.iter().enumerate() {
        let color = LINE_COLORS[i.min(SERIES)];
        let (dash, gap) = DASHES[i.min(SERIES)];
        let style = color.stroke_width(2);
        let name = format!(
            "{} ({})",
            s.name,
            words::plural(s.sockets, "socket", "sockets")
        );
        if gap == 0 {
            chart.draw_series(LineSeries::new(step(&s.peaks), style))?
        } else {
            chart.draw_series(DashedLineSeries::new(step(&s.peaks), dash, gap, style))?
        }
        .label(name)
        .legend(move |(x, y)| {
            if gap == 0 {
                PathElement::new(vec![(x, y), (x + 24, y)], style).into_dyn()
            } else {
                DashedPathElement::new(vec![(x, y), (x + 24, y)], dash, gap, style).into_dyn()
            }
        });
        let marks: Vec<(f64, f64, u32)> = s
            .crossings
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(b, &n)| {
                (
                    secs(width * b as u64) + secs(width) / 2.0,
                    f64::from(s.peaks[b]),
                    n,
                )
            })
            .collect();
        chart.draw_series(
            marks
                .iter()
                .map(|&(x, y, _)| TriangleMarker::new((x, y), 7, color.filled())),
        )?;
        chart.draw_series(marks.iter().filter(|m| m.2 > 1).map(|&(x, y, n)| {
            Text::new(
                format!("{n}"),
                (x, y),
                font(11.0).pos(Pos::new(HPos::Center, VPos::Bottom)),
            )
        }))?;
    }
    chart
        .draw_series(std::iter::empty::<TriangleMarker<(f64, f64), i32>>())?
        .label(format!(
            "▲ a socket crossed the {state} threshold (number: several in that bin)"
        ))
        .legend(|(x, y)| TriangleMarker::new((x + 12, y), 6, BLACK.filled()));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(font(12.0))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(180, 180, 180))
        .draw()?;
    root.present()
}

fn peak_of(v: &[u32]) -> (u32, usize) {
    v.iter().enumerate().fold(
        (0, 0),
        |(m, at), (b, &n)| if n > m { (n, b) } else { (m, at) },
    )
}

fn pileup_alt(series: &[Series], total: &[u32], width: u64, watched: &Watched) -> String {
    let state = watched.state.name();
    let (peak, at) = peak_of(total);
    let mut text = format!(
        "Line chart of the sockets in {state} over the capture, the peak in each of {BINS} bins of {}. At most {peak} at once, about {} after the start. ",
        words::duration(width),
        words::duration(width * at as u64),
    );
    for s in series {
        let (p, b) = peak_of(&s.peaks);
        let crossed: u32 = s.crossings.iter().sum();
        text.push_str(&format!(
            "{}: {} in {state}, at most {p} at once (at {}), {crossed} crossed the {} threshold. ",
            s.name,
            words::plural(s.sockets, "socket", "sockets"),
            words::duration(width * b as u64),
            words::duration(watched.threshold_ns),
        ));
    }
    text.trim_end().to_owned()
}

fn pileup_table(series: &[Series], width: u64, watched: &Watched) -> String {
    let mut t = format!(
        "<table><thead><tr><th>process</th><th>sockets that entered {}</th><th>most at once</th><th>when (since start)</th><th>threshold crossings</th></tr></thead><tbody>",
        watched.state.name()
    );
    for s in series {
        let (p, b) = peak_of(&s.peaks);
        t.push_str(&format!(
            "<tr><td>{}</td><td class=n>{}</td><td class=n>{p}</td><td class=n>{}</td><td class=n>{}</td></tr>",
            words::escape(&s.name),
            s.sockets,
            words::duration(width * b as u64),
            s.crossings.iter().sum::<u32>()
        ));
    }
    t.push_str("</tbody></table>");
    t
}

/// A connection in the Gantt chart and why it was chosen.
pub struct Row<'a> {
    pub timeline: &'a TimelineRecord,
    pub reasons: Vec<Reason>,
}

/// The bounded set of connections the Gantt shows: up to `GANTT_PER_REASON` for each
/// reason, in [`Reason::ALL`] order, each connection once.
pub fn gantt_rows<S: Sink>(c: &Collector<S>) -> Vec<Row<'_>> {
    let mut rows: Vec<Row> = Vec::new();
    for reason in Reason::ALL {
        let Some(top) = c.gantt.get(&reason) else {
            continue;
        };
        for (_, t) in &top.kept {
            let found = rows
                .iter()
                .position(|r| r.timeline.skaddr == t.skaddr && r.timeline.ts_ns == t.ts_ns);
            match found {
                Some(i) => rows[i].reasons.push(reason),
                None if rows.len() < GANTT_ROWS => rows.push(Row {
                    timeline: t,
                    reasons: vec![reason],
                }),
                None => {}
            }
        }
    }
    rows
}

/// A step's span in kernel ns: entered (or the capture start), left (or the timeline's end).
fn spans(t: &TimelineRecord, t0: u64) -> Vec<(TcpState, u64, u64, bool)> {
    let mut out = Vec::new();
    for (i, s) in t.states.iter().enumerate() {
        let start = s.enter_ns.unwrap_or(t0);
        let end = match s.duration_ns {
            Some(d) => start.saturating_add(d),
            None => t.states.get(i + 1).and_then(|n| n.enter_ns).unwrap_or(
                if t.outcome == Outcome::Open {
                    t.ts_ns
                } else {
                    start
                },
            ),
        };
        if end > start {
            out.push((s.state, start, end, s.enter_ns.is_none()));
        }
    }
    out
}

pub fn row_label(t: &TimelineRecord) -> String {
    format!(
        "{} {} → {}",
        words::owner_short(t.pid, t.comm.as_deref()),
        words::endpoint(t.laddr, t.lport),
        words::endpoint(t.raddr, t.rport)
    )
}

pub fn gantt<S: Sink>(c: &Collector<S>, a: &AnalysisRecord) -> Option<Figure> {
    let rows = gantt_rows(c);
    if rows.is_empty() {
        return None;
    }
    let t0 = c.start_ns();
    let end = a.end_ts_ns.max(c.last_ns).max(t0 + 1);
    let mut svg = String::new();
    draw_gantt(&mut svg, &rows, t0, end).ok()?;
    let considered = c.gantt.get(&Reason::LongestLived).map_or(0, |t| t.seen);
    let alt = format!(
        "Timeline chart of {} of the {} connections: {}. One bar per connection, split into its states, coloured by state and named inside when wide enough; time runs left to right from the capture start.",
        rows.len(),
        considered,
        Reason::ALL
            .iter()
            .map(|r| format!("{} ({})", r.words(), rows.iter().filter(|row| row.reasons.contains(r)).count()))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let mut table = String::from(
        "<table><thead><tr><th>connection</th><th>why shown</th><th>outcome</th><th>states (time in each)</th></tr></thead><tbody>",
    );
    for r in &rows {
        let steps: Vec<String> = r
            .timeline
            .states
            .iter()
            .map(|s| match s.duration_ns {
                Some(d) => format!("{} {}", s.state, words::duration(d)),
                None if s.inferred => format!("{} (inferred)", s.state),
                None => s.state.name().into_owned(),
            })
            .collect();
        table.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            words::escape(&row_label(r.timeline)),
            r.reasons
                .iter()
                .map(|r| r.words())
                .collect::<Vec<_>>()
                .join(", "),
            r.timeline.outcome.name(),
            words::escape(&steps.join(" → "))
        ));
    }
    table.push_str("</tbody></table>");
    Some(Figure { svg, alt, table })
}

fn draw_gantt(svg: &mut String, rows: &[Row], t0: u64, end: u64) -> DrawResult {
    let n = rows.len();
    let height = 90 + 26 * n as u32;
    let root = SVGBackend::with_string(svg, (960, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let x_max = secs(end - t0);
    let labels: Vec<String> = rows.iter().map(|r| row_label(r.timeline)).collect();
    let mut chart = ChartBuilder::on(&root)
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(330)
        .build_cartesian_2d(0f64..x_max, (0..n - 1).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc("seconds since the capture started")
        .label_style(font(11.0))
        .axis_desc_style(font(12.0))
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels
                .get(n - 1 - (*i).min(n - 1))
                .cloned()
                .unwrap_or_default(),
            SegmentValue::Exact(_) | SegmentValue::Last => String::new(),
        })
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    let px_per_s = 600.0 / x_max.max(1e-9);
    for (r, row) in rows.iter().enumerate() {
        let y = n - 1 - r;
        let t = row.timeline;
        let first = t.states.iter().find_map(|s| s.enter_ns).unwrap_or(t0);
        let (x_start, x_end) = (
            secs(first.saturating_sub(t0)),
            secs(t.ts_ns.saturating_sub(t0)),
        );
        // A connection too short to see at this scale still gets a mark where it was.
        if (x_end - x_start) * px_per_s < 3.0 {
            chart.draw_series(std::iter::once(Rectangle::new(
                [
                    (x_start, SegmentValue::Exact(y)),
                    (x_start + 3.0 / px_per_s, SegmentValue::Exact(y + 1)),
                ],
                BLACK.filled(),
            )))?;
        }
        let note = format!(
            "{} after {}",
            t.outcome.name(),
            words::duration(t.ts_ns.saturating_sub(first))
        );
        let place = if x_end < 0.7 * x_max {
            Some((
                x_end.max(x_start + 3.0 / px_per_s) + 4.0 / px_per_s,
                HPos::Left,
            ))
        } else if x_start > 0.3 * x_max {
            Some((x_start - 4.0 / px_per_s, HPos::Right))
        } else {
            None
        };
        if let Some((x, h)) = place {
            chart.draw_series(std::iter::once(Text::new(
                note,
                (x, SegmentValue::CenterOf(y)),
                font(11.0)
                    .color(&RGBColor(60, 60, 60))
                    .pos(Pos::new(h, VPos::Center)),
            )))?;
        }
        for (state, start, stop, before) in spans(row.timeline, t0) {
            let (x0, x1) = (secs(start - t0.min(start)), secs(stop.saturating_sub(t0)));
            let color = state_color(state);
            let fill = if before {
                color.mix(0.45).filled()
            } else {
                color.filled()
            };
            chart.draw_series(std::iter::once(Rectangle::new(
                [
                    (x0, SegmentValue::Exact(y)),
                    (x1, SegmentValue::Exact(y + 1)),
                ],
                fill,
            )))?;
            chart.draw_series(std::iter::once(Rectangle::new(
                [
                    (x0, SegmentValue::Exact(y)),
                    (x1, SegmentValue::Exact(y + 1)),
                ],
                WHITE.stroke_width(2),
            )))?;
            let name = short(state);
            if (x1 - x0) * px_per_s > name.len() as f64 * 7.5 + 6.0 {
                let text = if before { format!("≥ {name}") } else { name };
                chart.draw_series(std::iter::once(Text::new(
                    text,
                    ((x0 + x1) / 2.0, SegmentValue::CenterOf(y)),
                    font(11.0)
                        .color(&WHITE)
                        .pos(Pos::new(HPos::Center, VPos::Center)),
                )))?;
            }
        }
    }
    root.present()
}

/// The states' colours as an HTML legend (the chart names wide segments itself).
pub fn state_legend(states: &[TcpState]) -> String {
    let mut out = String::from("<p class=legend>");
    for s in states {
        let RGBColor(r, g, b) = state_color(*s);
        out.push_str(&format!(
            "<span><i style=\"background:rgb({r},{g},{b})\"></i>{}</span> ",
            s.name()
        ));
    }
    out.push_str("<span><i class=faded></i>state entered before the capture (at least)</span></p>");
    out
}

/// Connections by outcome; `causes` (by outcome name and cause, see
/// [`super::collect::Collector::causes`]) fill the table's cause column.
pub fn outcomes(
    a: &AnalysisRecord,
    causes: &BTreeMap<(&'static str, String), u64>,
) -> Option<Figure> {
    if a.outcomes.is_empty() {
        return None;
    }
    let mut svg = String::new();
    draw_outcomes(&mut svg, a).ok()?;
    let parts: Vec<String> = a
        .outcomes
        .iter()
        .map(|o| format!("{} {}", o.outcome.name(), o.count))
        .collect();
    let alt = format!(
        "Bar chart of the {} connections by how they ended: {}.",
        a.connections,
        parts.join(", ")
    );
    let mut table = String::from(
        "<table><thead><tr><th>outcome</th><th>connections</th><th>share</th><th>causes the kernel reported (errno the application saw, RST)</th></tr></thead><tbody>",
    );
    for o in &a.outcomes {
        let name = o.outcome.name();
        let mine: Vec<String> = causes
            .range((name, String::new())..)
            .take_while(|((outcome, _), _)| *outcome == name)
            .map(|((_, cause), n)| format!("{} ×{n}", super::words::escape(cause)))
            .collect();
        table.push_str(&format!(
            "<tr><td>{}</td><td class=n>{}</td><td class=n>{:.1}%</td><td data-causes=\"{}\">{}</td></tr>",
            name,
            o.count,
            100.0 * o.count as f64 / a.connections.max(1) as f64,
            mine.len(),
            if mine.is_empty() { "–".to_owned() } else { mine.join("; ") }
        ));
    }
    table.push_str("</tbody></table>");
    Some(Figure { svg, alt, table })
}

fn draw_outcomes(svg: &mut String, a: &AnalysisRecord) -> DrawResult {
    let n = a.outcomes.len();
    let root = SVGBackend::with_string(svg, (460, 60 + 30 * n as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = a.outcomes.iter().map(|o| o.count).max().unwrap_or(1) as f64;
    let names: Vec<&str> = a.outcomes.iter().map(|o| o.outcome.name()).collect();
    let mut chart = ChartBuilder::on(&root)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(130)
        .build_cartesian_2d(0f64..max * 1.25, (0..n - 1).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .label_style(font(12.0))
        .y_labels(n)
        .x_labels(5)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => names
                .get(n - 1 - (*i).min(n - 1))
                .map(|s| (*s).to_owned())
                .unwrap_or_default(),
            SegmentValue::Exact(_) | SegmentValue::Last => String::new(),
        })
        .draw()?;
    for (r, o) in a.outcomes.iter().enumerate() {
        let y = n - 1 - r;
        let bad = super::collect::ended_badly(o.outcome);
        let color = if bad {
            RGBColor(192, 40, 40)
        } else {
            RGBColor(80, 110, 160)
        };
        chart.draw_series(std::iter::once(Rectangle::new(
            [
                (0.0, SegmentValue::Exact(y)),
                (o.count as f64, SegmentValue::Exact(y + 1)),
            ],
            color.filled(),
        )))?;
        chart.draw_series(std::iter::once(Rectangle::new(
            [
                (0.0, SegmentValue::Exact(y)),
                (o.count as f64, SegmentValue::Exact(y + 1)),
            ],
            WHITE.stroke_width(4),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            format!(" {}{}", o.count, if bad { " (ended badly)" } else { "" }),
            (o.count as f64, SegmentValue::CenterOf(y)),
            font(12.0).pos(Pos::new(HPos::Left, VPos::Center)),
        )))?;
    }
    root.present()
}

pub const BUCKET_NAMES: [&str; DWELL_BUCKETS] = [
    "<1µs",
    "1-10µs",
    "10-100µs",
    "0.1-1ms",
    "1-10ms",
    "10-100ms",
    "0.1-1s",
    "1-10s",
    "10-100s",
    "≥100s",
];

pub fn dwell<S: Sink>(c: &Collector<S>, a: &AnalysisRecord) -> Option<Figure> {
    if c.dwell.is_empty() {
        return None;
    }
    let rows: Vec<(TcpState, [u64; DWELL_BUCKETS])> =
        c.dwell.iter().map(|(s, b)| (*s, *b)).collect();
    let mut svg = String::new();
    draw_dwell(&mut svg, &rows).ok()?;
    let alt = format!(
        "Table-shaped chart of how long connections stayed in each state: one row per state, one column per decade of time from under 1µs to over 100s, each cell giving the number of stays of that length (darker: a larger share of the row). Rows: {}.",
        rows.iter().map(|(s, _)| s.name().into_owned()).collect::<Vec<_>>().join(", ")
    );
    let by_state: BTreeMap<TcpState, _> = a.dwell.iter().map(|d| (d.state, d)).collect();
    let mut table = String::from("<table><thead><tr><th>state</th><th>stays timed</th><th>p50</th><th>p90</th><th>p99</th><th>max</th></tr></thead><tbody>");
    for (s, _) in &rows {
        if let Some(d) = by_state.get(s) {
            table.push_str(&format!(
                "<tr><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td></tr>",
                s,
                d.count,
                words::duration(d.p50_ns),
                words::duration(d.p90_ns),
                words::duration(d.p99_ns),
                words::duration(d.max_ns)
            ));
        }
    }
    table.push_str("</tbody></table>");
    Some(Figure { svg, alt, table })
}

fn draw_dwell(svg: &mut String, rows: &[(TcpState, [u64; DWELL_BUCKETS])]) -> DrawResult {
    let n = rows.len();
    let root = SVGBackend::with_string(svg, (960, 70 + 30 * n as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    draw_heat(&root, rows)?;
    root.present()
}

fn draw_heat(
    root: &DrawingArea<SVGBackend, Shift>,
    rows: &[(TcpState, [u64; DWELL_BUCKETS])],
) -> DrawResult {
    let n = rows.len();
    let mut chart = ChartBuilder::on(root)
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(110)
        .build_cartesian_2d(
            (0..DWELL_BUCKETS - 1).into_segmented(),
            (0..n - 1).into_segmented(),
        )?;
    chart
        .configure_mesh()
        .disable_mesh()
        .label_style(font(12.0))
        .x_desc("time spent in the state")
        .axis_desc_style(font(12.0))
        .x_labels(DWELL_BUCKETS)
        .y_labels(n)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => BUCKET_NAMES
                .get(*i)
                .map(|s| (*s).to_owned())
                .unwrap_or_default(),
            SegmentValue::Exact(_) | SegmentValue::Last => String::new(),
        })
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => rows
                .get(n - 1 - (*i).min(n - 1))
                .map(|(s, _)| s.name().into_owned())
                .unwrap_or_default(),
            SegmentValue::Exact(_) | SegmentValue::Last => String::new(),
        })
        .draw()?;
    for (r, (state, buckets)) in rows.iter().enumerate() {
        let y = n - 1 - r;
        let total: u64 = buckets.iter().sum::<u64>().max(1);
        let color = state_color(*state);
        for (b, &count) in buckets.iter().enumerate() {
            let share = count as f64 / total as f64;
            let cell = || {
                [
                    (SegmentValue::Exact(b), SegmentValue::Exact(y)),
                    (SegmentValue::Exact(b + 1), SegmentValue::Exact(y + 1)),
                ]
            };
            if count > 0 {
                chart.draw_series(std::iter::once(Rectangle::new(
                    cell(),
                    color.mix(0.15 + 0.85 * share).filled(),
                )))?;
            }
            chart.draw_series(std::iter::once(Rectangle::new(
                cell(),
                RGBColor(220, 220, 220).stroke_width(1),
            )))?;
            if count > 0 {
                let ink = if share > 0.5 { WHITE } else { BLACK };
                chart.draw_series(std::iter::once(Text::new(
                    count.to_string(),
                    (SegmentValue::CenterOf(b), SegmentValue::CenterOf(y)),
                    font(12.0)
                        .color(&ink)
                        .pos(Pos::new(HPos::Center, VPos::Center)),
                )))?;
            }
        }
    }
    Ok(())
}
