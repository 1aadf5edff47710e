//! The RFC 793 state diagram as observed, drawn with plotters' primitives on its SVG backend.
//!
//! The layout is fixed, as RFC 793 (figure 6) and the textbooks draw it: CLOSED at the top,
//! LISTEN under it, SYN_RECV left and SYN_SENT right, ESTABLISHED in the middle, the active
//! close down the left (FIN_WAIT1, FIN_WAIT2), CLOSING in the centre, the passive close down
//! the right (CLOSE_WAIT, LAST_ACK), TIME_WAIT at the bottom and CLOSED again bottom right
//! (the RFC draws that CLOSED twice too). No layout library would reproduce the picture a
//! reader recognises, so each node and edge route has its coordinates here.
//!
//! Each RFC edge is labelled with the times it was taken and the p50/p99 time spent in the
//! state before it; edges never taken are faint. The three close paths have their own colour
//! and line pattern (readable without colour). Edges Linux takes that the RFC's figure does
//! not draw (a reset or abort straight to CLOSE) are listed beside their source state.
//! Two RFC edges are left out because Linux never reports them: SYN_RECV -> LISTEN (the
//! embryonic socket is freed: its end shows as SYN_RECV -> CLOSE) and, since the kernel hands
//! the connection to a timewait socket without a transition, TIME_WAIT -> CLOSED is drawn but
//! marked "not traced".

use plotters::{
    coord::Shift,
    element::DashedPathElement,
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use super::{collect::Edge, words};
use crate::{analyze::report::percentile, event::TcpState};

pub const WIDTH: u32 = 960;
pub const HEIGHT: u32 = 850;
const HALF_W: i32 = 75;
const HALF_H: i32 = 20;

/// Which close path an edge belongs to: its colour and dash pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Open,
    Active,
    Simultaneous,
    Passive,
    NotTraced,
}

impl Path {
    pub fn words(self) -> &'static str {
        match self {
            Path::Open => "opening",
            Path::Active => "active close (we sent FIN first)",
            Path::Simultaneous => "simultaneous close",
            Path::Passive => "passive close (the peer sent FIN first)",
            Path::NotTraced => "not traced",
        }
    }

    fn color(self) -> RGBColor {
        match self {
            Path::Open => RGBColor(60, 60, 60),
            Path::Active => RGBColor(31, 95, 191),
            Path::Simultaneous => RGBColor(123, 63, 160),
            Path::Passive => RGBColor(192, 80, 0),
            Path::NotTraced => RGBColor(150, 150, 150),
        }
    }

    /// Dash and gap in pixels; `None` draws a solid line.
    fn dash(self) -> Option<(u32, u32)> {
        match self {
            Path::Open | Path::Active => None,
            Path::Simultaneous => Some((10, 4)),
            Path::Passive => Some((3, 3)),
            Path::NotTraced => Some((6, 6)),
        }
    }
}

/// A box of the diagram: its state and centre. CLOSED appears twice, as in the RFC.
struct Node {
    state: TcpState,
    at: (i32, i32),
}

const NODES: [Node; 12] = [
    node(TcpState::Close, 480, 50),
    node(TcpState::Listen, 480, 160),
    node(TcpState::SynRecv, 150, 290),
    node(TcpState::SynSent, 810, 290),
    node(TcpState::Established, 480, 410),
    node(TcpState::FinWait1, 150, 530),
    node(TcpState::CloseWait, 810, 530),
    node(TcpState::FinWait2, 150, 670),
    node(TcpState::Closing, 480, 670),
    node(TcpState::LastAck, 810, 670),
    node(TcpState::TimeWait, 480, 800),
    node(TcpState::Close, 810, 800),
];

const fn node(state: TcpState, x: i32, y: i32) -> Node {
    Node { state, at: (x, y) }
}

/// An edge of RFC 793's figure: its route (first point on the source box, last on the
/// target's) and where its label goes.
pub struct Route {
    pub from: TcpState,
    pub to: TcpState,
    pub path: Path,
    points: &'static [(i32, i32)],
    label: (i32, i32),
    anchor: HPos,
}

const fn route(
    from: TcpState,
    to: TcpState,
    path: Path,
    points: &'static [(i32, i32)],
    label: (i32, i32),
    anchor: HPos,
) -> Route {
    Route {
        from,
        to,
        path,
        points,
        label,
        anchor,
    }
}

use TcpState::{
    Close, CloseWait, Closing, Established, FinWait1, FinWait2, LastAck, Listen, SynRecv, SynSent,
    TimeWait,
};

pub const ROUTES: [Route; 19] = [
    route(
        Close,
        Listen,
        Path::Open,
        &[(465, 70), (465, 140)],
        (455, 98),
        HPos::Right,
    ),
    route(
        Listen,
        Close,
        Path::Open,
        &[(495, 140), (495, 70)],
        (505, 98),
        HPos::Left,
    ),
    route(
        Close,
        SynSent,
        Path::Open,
        &[(555, 45), (840, 45), (840, 270)],
        (850, 120),
        HPos::Left,
    ),
    route(
        SynSent,
        Close,
        Path::Open,
        &[(780, 270), (780, 62), (555, 62)],
        (770, 140),
        HPos::Right,
    ),
    route(
        Listen,
        SynRecv,
        Path::Open,
        &[(405, 172), (170, 270)],
        (290, 190),
        HPos::Right,
    ),
    route(
        Listen,
        SynSent,
        Path::Open,
        &[(555, 172), (740, 270)],
        (640, 205),
        HPos::Left,
    ),
    route(
        SynSent,
        SynRecv,
        Path::Open,
        &[(735, 290), (225, 290)],
        (480, 262),
        HPos::Center,
    ),
    route(
        SynRecv,
        Established,
        Path::Open,
        &[(200, 310), (405, 398)],
        (290, 335),
        HPos::Right,
    ),
    route(
        SynSent,
        Established,
        Path::Open,
        &[(760, 310), (555, 398)],
        (670, 335),
        HPos::Left,
    ),
    route(
        SynRecv,
        FinWait1,
        Path::Open,
        &[(130, 310), (130, 510)],
        (120, 420),
        HPos::Right,
    ),
    route(
        Established,
        FinWait1,
        Path::Active,
        &[(405, 425), (225, 518)],
        (305, 470),
        HPos::Left,
    ),
    route(
        Established,
        CloseWait,
        Path::Passive,
        &[(555, 425), (735, 518)],
        (655, 470),
        HPos::Right,
    ),
    route(
        FinWait1,
        FinWait2,
        Path::Active,
        &[(150, 550), (150, 650)],
        (160, 592),
        HPos::Left,
    ),
    route(
        FinWait1,
        Closing,
        Path::Simultaneous,
        &[(225, 545), (430, 650)],
        (335, 575),
        HPos::Left,
    ),
    route(
        FinWait2,
        TimeWait,
        Path::Active,
        &[(150, 690), (150, 800), (405, 800)],
        (160, 735),
        HPos::Left,
    ),
    route(
        Closing,
        TimeWait,
        Path::Simultaneous,
        &[(480, 690), (480, 780)],
        (490, 728),
        HPos::Left,
    ),
    route(
        CloseWait,
        LastAck,
        Path::Passive,
        &[(810, 550), (810, 650)],
        (800, 592),
        HPos::Right,
    ),
    route(
        LastAck,
        Close,
        Path::Passive,
        &[(810, 690), (810, 780)],
        (800, 728),
        HPos::Right,
    ),
    route(
        TimeWait,
        Close,
        Path::NotTraced,
        &[(555, 800), (735, 800)],
        (645, 776),
        HPos::Center,
    ),
];

/// Is `from -> to` drawn as one of [`ROUTES`]?
pub fn is_routed(from: TcpState, to: TcpState) -> bool {
    ROUTES.iter().any(|r| r.from == from && r.to == to)
}

/// p50 and p99 of an edge's known dwell times.
pub fn p50_p99(edge: &Edge) -> Option<(u64, u64)> {
    if edge.dwell.is_empty() {
        return None;
    }
    let mut sorted = edge.dwell.clone();
    sorted.sort_unstable();
    Some((percentile(&sorted, 50), percentile(&sorted, 99)))
}

/// `12×`, then `p50 43µs · p99 84µs` when dwell times are known (`≈` when sampled).
pub fn label(edge: &Edge) -> Vec<String> {
    let mut lines = vec![format!("{}×", edge.count)];
    if let Some((p50, p99)) = p50_p99(edge) {
        let approx = if edge.sampled() { "≈" } else { "" };
        lines.push(format!(
            "p50 {approx}{} · p99 {approx}{}",
            words::duration(p50),
            words::duration(p99)
        ));
    }
    lines
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type DrawResult = Result<(), DrawingAreaErrorKind<std::io::Error>>;

fn styled(px: f64, color: RGBColor, h: HPos, v: VPos, style: FontStyle) -> TextStyle<'static> {
    // The SVG backend writes font-size as size / 1.24.
    TextStyle {
        font: ("sans-serif", px * 1.24).into_font().style(style),
        color: color.to_backend_color(),
        pos: Pos::new(h, v),
    }
}

/// Text on a white background so it stays readable over lines; `lines` go down from `at`.
fn text_block(
    area: &Area,
    lines: &[String],
    at: (i32, i32),
    anchor: HPos,
    color: RGBColor,
    bold_first: bool,
) -> DrawResult {
    const PX: i32 = 12;
    let width = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0) as i32 * 8;
    let height = lines.len() as i32 * (PX + 3);
    let x0 = match anchor {
        HPos::Left => at.0,
        HPos::Center => at.0 - width / 2,
        HPos::Right => at.0 - width,
    };
    area.draw(&Rectangle::new(
        [(x0 - 2, at.1 - 1), (x0 + width + 2, at.1 + height)],
        WHITE.mix(0.85).filled(),
    ))?;
    for (i, line) in lines.iter().enumerate() {
        let weight = if i == 0 && bold_first {
            FontStyle::Bold
        } else {
            FontStyle::Normal
        };
        let style = styled(f64::from(PX), color, anchor, VPos::Top, weight);
        area.draw(&Text::new(
            line.clone(),
            (at.0, at.1 + i as i32 * (PX + 3)),
            style,
        ))?;
    }
    Ok(())
}

fn arrow(
    area: &Area,
    points: &[(i32, i32)],
    style: ShapeStyle,
    dash: Option<(u32, u32)>,
) -> DrawResult {
    match dash {
        None => area.draw(&PathElement::new(points.to_vec(), style))?,
        Some((size, gap)) => area.draw(&DashedPathElement::new(
            points.iter().copied(),
            size,
            gap,
            style,
        ))?,
    }
    let (Some(&tip), Some(&prev)) = (points.last(), points.iter().rev().nth(1)) else {
        return Ok(());
    };
    let (dx, dy) = (f64::from(tip.0 - prev.0), f64::from(tip.1 - prev.1));
    let len = dx.hypot(dy).max(1.0);
    let (ux, uy) = (dx / len, dy / len);
    let size = 9.0 + f64::from(style.stroke_width);
    let base = (f64::from(tip.0) - ux * size, f64::from(tip.1) - uy * size);
    let half = size * 0.5;
    let corner = |s: f64| {
        (
            (base.0 - uy * half * s).round() as i32,
            (base.1 + ux * half * s).round() as i32,
        )
    };
    area.draw(&Polygon::new(
        vec![tip, corner(1.0), corner(-1.0)],
        style.color.filled(),
    ))
}

/// Draws the diagram. `edge(from, to)` gives what was observed; `other` lists, per source
/// state, the observed edges that are not in RFC 793's figure (text lines); `stuck` is the
/// number of CLOSE_WAIT findings, shown on that state's box.
pub fn draw(
    svg: &mut String,
    edge: &dyn Fn(TcpState, TcpState) -> Option<Edge>,
    other: &dyn Fn(TcpState) -> Vec<String>,
    stuck: usize,
) -> DrawResult {
    let area = SVGBackend::with_string(svg, (WIDTH, HEIGHT)).into_drawing_area();
    area.fill(&WHITE)?;
    let max = ROUTES
        .iter()
        .filter_map(|r| edge(r.from, r.to))
        .map(|e| e.count)
        .max()
        .unwrap_or(1)
        .max(1);
    // Faint edges first, so the taken ones are drawn over them.
    let mut order: Vec<(&Route, Option<Edge>)> =
        ROUTES.iter().map(|r| (r, edge(r.from, r.to))).collect();
    order.sort_by_key(|(_, e)| e.as_ref().map_or(0, |e| e.count.min(1)));
    for (r, e) in &order {
        let taken = e.as_ref().is_some_and(|e| e.count > 0);
        let style = if taken {
            let count = e.as_ref().map_or(0, |e| e.count);
            let width = 1.5 + 3.5 * ((count as f64).ln_1p() / (max as f64).ln_1p());
            r.path.color().stroke_width(width.round() as u32)
        } else if r.path == Path::NotTraced {
            r.path.color().mix(0.8).stroke_width(1)
        } else {
            RGBColor(200, 200, 200).mix(0.6).stroke_width(1)
        };
        arrow(&area, r.points, style, r.path.dash())?;
    }
    for (r, e) in &order {
        match e.as_ref().filter(|e| e.count > 0) {
            Some(e) => text_block(&area, &label(e), r.label, r.anchor, r.path.color(), true)?,
            None if r.path == Path::NotTraced => text_block(
                &area,
                &["2MSL timeout:".into(), "not traced".into()],
                r.label,
                r.anchor,
                r.path.color(),
                false,
            )?,
            None => text_block(
                &area,
                &["never".into()],
                r.label,
                r.anchor,
                RGBColor(170, 170, 170),
                false,
            )?,
        }
    }
    for (i, n) in NODES.iter().enumerate() {
        let (x, y) = n.at;
        let hot = n.state == TcpState::CloseWait && stuck > 0;
        let (fill, stroke, width) = if hot {
            (RGBColor(253, 226, 226), RGBColor(190, 20, 20), 4)
        } else {
            (RGBColor(248, 248, 248), BLACK, 2)
        };
        area.draw(&Rectangle::new(
            [(x - HALF_W, y - HALF_H), (x + HALF_W, y + HALF_H)],
            fill.filled(),
        ))?;
        area.draw(&Rectangle::new(
            [(x - HALF_W, y - HALF_H), (x + HALF_W, y + HALF_H)],
            stroke.stroke_width(width),
        ))?;
        let style = styled(15.0, BLACK, HPos::Center, VPos::Center, FontStyle::Bold);
        area.draw(&Text::new(n.state.name().into_owned(), (x, y), style))?;
        if hot {
            text_block(
                &area,
                &[format!("{stuck} stuck past the threshold")],
                (x + HALF_W, y + HALF_H + 4),
                HPos::Right,
                RGBColor(190, 20, 20),
                true,
            )?;
        }
        // Edges the RFC figure does not draw, beside their source (once per state).
        let first = NODES.iter().position(|m| m.state == n.state) == Some(i);
        let lines = if first { other(n.state) } else { Vec::new() };
        if !lines.is_empty() {
            let (at, anchor) = match x {
                x if x < 300 => (
                    (x - HALF_W, y - HALF_H - 4 - 15 * lines.len() as i32),
                    HPos::Left,
                ),
                x if x > 660 => (
                    (x + HALF_W, y - HALF_H - 4 - 15 * lines.len() as i32),
                    HPos::Right,
                ),
                _ => ((x + HALF_W + 6, y - 8), HPos::Left),
            };
            text_block(&area, &lines, at, anchor, RGBColor(150, 0, 0), false)?;
        }
    }
    area.present()
}
