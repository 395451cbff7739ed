//! Placement of point labels so they do not overlap one another or the points: each label
//! takes the first free spot among positions around its point, tried nearest first.

/// A rectangle in pixels: top-left corner, width and height.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rect {
    pub x: i32,
    pub y: i32,
    pub w: i32,
    pub h: i32,
}

impl Rect {
    fn overlap(&self, o: &Rect) -> i64 {
        let w = (self.x + self.w).min(o.x + o.w) - self.x.max(o.x);
        let h = (self.y + self.h).min(o.y + o.h) - self.y.max(o.y);
        if w <= 0 || h <= 0 {
            0
        } else {
            i64::from(w) * i64::from(h)
        }
    }

    fn inside(&self, bounds: &Rect) -> bool {
        self.x >= bounds.x
            && self.y >= bounds.y
            && self.x + self.w <= bounds.x + bounds.w
            && self.y + self.h <= bounds.y + bounds.h
    }
}

/// Pixels between a point and its label.
const GAP: i32 = 9;
/// Half the side of the box a point's marker occupies.
const MARKER: i32 = 8;
/// Rows of positions tried above and below a point before giving up.
const STEPS: i32 = 24;

/// Where to put each label: `anchors[i]` is a point, `sizes[i]` its label's (width, height);
/// `lines` are polylines drawn on the chart, which labels keep off too. Returns each label's
/// rectangle, inside `bounds` where possible. Labels are placed in order of their points
/// (left to right, then top to bottom); each takes the first position, nearest first, that
/// overlaps no label placed before it, no point and no line; if none is free, the one with
/// the least overlap.
pub(crate) fn place(
    anchors: &[(i32, i32)],
    sizes: &[(i32, i32)],
    lines: &[Vec<(i32, i32)>],
    bounds: Rect,
) -> Vec<Rect> {
    let mut markers: Vec<Rect> = anchors.iter().map(|&a| marker(a)).collect();
    markers.extend(lines.iter().flat_map(|l| along(l)));
    let mut order: Vec<usize> = (0..anchors.len().min(sizes.len())).collect();
    order.sort_by_key(|&i| (anchors[i].0, anchors[i].1, i));
    let mut placed: Vec<Option<Rect>> = vec![None; order.len()];
    for i in order {
        let taken: Vec<Rect> = placed
            .iter()
            .flatten()
            .copied()
            .chain(markers.iter().copied())
            .collect();
        let cost = |r: &Rect| -> i64 {
            let outside = if r.inside(&bounds) { 0 } else { i64::MAX / 4 };
            outside.saturating_add(taken.iter().map(|t| r.overlap(t)).sum::<i64>())
        };
        let mut best: Option<(i64, Rect)> = None;
        for r in candidates(anchors[i], sizes[i]) {
            let c = cost(&r);
            if best.is_none_or(|(b, _)| c < b) {
                best = Some((c, r));
            }
            if c == 0 {
                break;
            }
        }
        placed[i] = best.map(|(_, r)| r);
    }
    placed
        .into_iter()
        .zip(anchors)
        .map(|(r, &(x, y))| r.unwrap_or(Rect { x, y, w: 0, h: 0 }))
        .collect()
}

/// The box a point's marker occupies.
fn marker((x, y): (i32, i32)) -> Rect {
    Rect {
        x: x - MARKER,
        y: y - MARKER,
        w: 2 * MARKER,
        h: 2 * MARKER,
    }
}

/// Small boxes every few pixels along a polyline.
fn along(line: &[(i32, i32)]) -> Vec<Rect> {
    const STEP: i32 = 4;
    let mut out = Vec::new();
    for w in line.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        let n = ((x1 - x0).abs().max((y1 - y0).abs()) / STEP).clamp(1, 4096);
        for k in 0..=n {
            let x = x0 + (x1 - x0) * k / n;
            let y = y0 + (y1 - y0) * k / n;
            out.push(Rect {
                x: x - 1,
                y: y - 1,
                w: 3,
                h: 3,
            });
        }
    }
    out
}

/// Positions around a point, nearest first: right and left of it, level with it, then rows
/// above and below, alternately.
fn candidates((x, y): (i32, i32), (w, h): (i32, i32)) -> impl Iterator<Item = Rect> {
    let step = h + 2;
    (0..=STEPS).flat_map(move |k| {
        let rows = if k == 0 { vec![0] } else { vec![-k, k] };
        rows.into_iter().flat_map(move |row| {
            let top = y - h / 2 + row * step;
            [x + GAP + MARKER / 2, x - GAP - MARKER / 2 - w].map(|left| Rect {
                x: left,
                y: top,
                w,
                h,
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Rect = Rect {
        x: 0,
        y: 0,
        w: 1280,
        h: 720,
    };

    fn disjoint(rects: &[Rect]) -> bool {
        rects
            .iter()
            .enumerate()
            .all(|(i, a)| rects[i + 1..].iter().all(|b| a.overlap(b) == 0))
    }

    #[test]
    fn labels_of_points_at_one_spot_do_not_overlap() {
        let anchors = vec![(600, 300); 7];
        let sizes = vec![(160, 14); 7];
        let rects = place(&anchors, &sizes, &[], BOUNDS);
        assert!(disjoint(&rects), "{rects:?}");
        for r in &rects {
            assert!(r.inside(&BOUNDS));
            assert!((r.y - 300).abs() < 100, "stays near its point: {r:?}");
        }
    }

    #[test]
    fn labels_of_close_points_keep_clear_of_labels_and_points() {
        // A --sweep frontier: points a few pixels apart on a diagonal, long labels.
        let anchors: Vec<(i32, i32)> = (0..8).map(|i| (400 + 6 * i, 400 - 5 * i)).collect();
        let sizes = vec![(220, 14); 8];
        let rects = place(&anchors, &sizes, &[], BOUNDS);
        assert!(disjoint(&rects), "{rects:?}");
        let markers: Vec<Rect> = anchors.iter().map(|&a| marker(a)).collect();
        assert!(
            rects
                .iter()
                .all(|r| markers.iter().all(|m| r.overlap(m) == 0))
        );
    }

    #[test]
    fn labels_keep_off_a_line_through_their_point() {
        // A horizontal line through the point, and one through the row below it.
        let lines = vec![vec![(100, 300), (900, 300)], vec![(100, 318), (900, 318)]];
        let rects = place(&[(500, 300)], &[(120, 14)], &lines, BOUNDS);
        let r = rects[0];
        assert!(
            along(&lines[0])
                .iter()
                .chain(&along(&lines[1]))
                .all(|b| r.overlap(b) == 0),
            "{r:?}"
        );
        assert!(r.y + r.h <= 300, "above the line: {r:?}");
    }

    #[test]
    fn a_label_at_the_right_edge_goes_left_of_its_point() {
        let rects = place(&[(1270, 300)], &[(100, 14)], &[], BOUNDS);
        assert!(rects[0].inside(&BOUNDS) && rects[0].x + rects[0].w < 1270);
    }
}
