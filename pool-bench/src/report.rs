//! Turning samples into the markdown tables, the CSV and the SVG chart.

use std::fmt::Write as _;
use std::time::Duration;

use crate::contenders::Contender;
use crate::harness::{Hold, Sample};
use crate::stats::{median, Histogram};

/// One cell of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    /// The cycle.
    pub hold: Hold,
    /// Concurrent workers.
    pub workers: usize,
    /// Pool size.
    pub size: usize,
}

impl Cell {
    /// Whether the workers outnumber the connections (the target is then 1.5).
    pub fn contended(&self) -> bool {
        self.workers > self.size
    }

    /// The ratio this pool must reach against the best sound peer.
    pub fn target(&self) -> f64 {
        if self.contended() {
            1.5
        } else {
            1.0
        }
    }
}

/// One measurement and where it belongs.
#[derive(Debug, Clone)]
pub struct Record {
    /// Index into the cells.
    pub cell: usize,
    /// Which repetition.
    pub rep: usize,
    /// Which pool.
    pub contender: Contender,
    /// What it measured.
    pub sample: Sample,
}

/// What a cell's repetitions add up to, for one contender.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The pool.
    pub contender: Contender,
    /// Median cycles per second.
    pub throughput: f64,
    /// Median of the per-repetition ratios to the best unflagged peer of that repetition.
    pub ratio: Option<f64>,
    /// Every repetition's waits together.
    pub waits: Histogram,
    /// Median Jain's index.
    pub jain: f64,
    /// Most workers starved in one repetition.
    pub starved: usize,
    /// Most workers stuck in one repetition.
    pub stuck: usize,
    /// Errors over all repetitions.
    pub errors: u64,
    /// The first error message seen.
    pub first_error: Option<String>,
    /// Repetitions in which it was flagged, of all.
    pub flagged: usize,
    /// Repetitions run.
    pub reps: usize,
}

impl Summary {
    /// A short flag for tables: why it cannot be best peer here, if it cannot.
    pub fn flag(&self) -> Option<String> {
        if self.flagged == 0 {
            return None;
        }
        let mut why = Vec::new();
        if self.stuck > 0 {
            why.push(format!("stuck {}", self.stuck));
        }
        if self.errors > 0 {
            why.push(format!("erred {}", self.errors));
        }
        if self.starved > 0 {
            why.push(format!("starved {}", self.starved));
        }
        Some(why.join(", "))
    }
}

/// Per-repetition ratio of `c` to the best peer not flagged in that repetition.
fn rep_ratio(records: &[&Record], rep: usize, c: Contender) -> Option<(f64, Contender)> {
    let mine = records
        .iter()
        .find(|r| r.rep == rep && r.contender == c)?
        .sample
        .throughput();
    let best = records
        .iter()
        .filter(|r| r.rep == rep && r.contender.is_peer() && r.sample.flag().is_none())
        .max_by(|a, b| a.sample.throughput().total_cmp(&b.sample.throughput()))?;
    let t = best.sample.throughput();
    (t > 0.0).then(|| (mine / t, best.contender))
}

/// Summaries of one cell, in column order.
pub fn summarize(records: &[Record], cell: usize, reps: usize) -> Vec<Summary> {
    let here: Vec<&Record> = records.iter().filter(|r| r.cell == cell).collect();
    let mut out = Vec::new();
    for c in Contender::ALL {
        let mine: Vec<&&Record> = here.iter().filter(|r| r.contender == c).collect();
        if mine.is_empty() {
            continue;
        }
        let mut waits = Histogram::new();
        for r in &mine {
            waits.merge(&r.sample.waits);
        }
        let thr: Vec<f64> = mine.iter().map(|r| r.sample.throughput()).collect();
        let jains: Vec<f64> = mine.iter().map(|r| r.sample.jain()).collect();
        let ratios: Vec<f64> = (0..reps)
            .filter_map(|rep| rep_ratio(&here, rep, c).map(|(x, _)| x))
            .collect();
        out.push(Summary {
            contender: c,
            throughput: median(&thr).unwrap_or(0.0),
            ratio: median(&ratios),
            waits,
            jain: median(&jains).unwrap_or(0.0),
            starved: mine.iter().map(|r| r.sample.starved()).max().unwrap_or(0),
            stuck: mine.iter().map(|r| r.sample.stuck).max().unwrap_or(0),
            errors: mine.iter().map(|r| r.sample.errors).sum(),
            first_error: mine.iter().find_map(|r| r.sample.first_error.clone()),
            flagged: mine.iter().filter(|r| r.sample.flag().is_some()).count(),
            reps: mine.len(),
        });
    }
    out
}

/// The best peer of a cell: the highest median throughput among peers never flagged in it.
pub fn best_peer(summaries: &[Summary]) -> Option<&Summary> {
    summaries
        .iter()
        .filter(|s| s.contender.is_peer() && s.flagged == 0)
        .max_by(|a, b| a.throughput.total_cmp(&b.throughput))
}

fn mcps(x: f64) -> String {
    let m = x / 1e6;
    if m >= 10.0 {
        format!("{m:.1}")
    } else if m >= 0.1 {
        format!("{m:.2}")
    } else {
        format!("{m:.3}")
    }
}

/// A duration in microseconds, compactly.
pub fn us(d: Duration) -> String {
    let u = d.as_secs_f64() * 1e6;
    if u == 0.0 {
        "0".into()
    } else if u < 10.0 {
        format!("{u:.2}")
    } else if u < 1000.0 {
        format!("{u:.0}")
    } else {
        format!("{:.1}k", u / 1000.0)
    }
}

fn header(out: &mut String, first: &[&str], columns: &[Contender]) {
    let mut names: Vec<&str> = first.to_vec();
    names.extend(columns.iter().map(|c| c.name()));
    let _ = writeln!(out, "| {} |", names.join(" | "));
    let _ = writeln!(out, "|{}", names.iter().map(|_| "---|").collect::<String>());
}

/// The markdown report: throughput, ratios, waits, fairness.
pub fn markdown(cells: &[Cell], records: &[Record], reps: usize) -> String {
    let columns: Vec<Contender> = Contender::ALL
        .into_iter()
        .filter(|c| records.iter().any(|r| r.contender == *c))
        .collect();
    let all: Vec<Vec<Summary>> = (0..cells.len())
        .map(|i| summarize(records, i, reps))
        .collect();
    let mut out = String::new();
    let lead = ["cycle", "workers", "size"];
    let row_lead = |c: &Cell| format!("| {} | {} | {} |", c.hold.name(), c.workers, c.size);
    let find = |sums: &[Summary], c: Contender| sums.iter().find(|s| s.contender == c).cloned();

    let _ = writeln!(
        out,
        "### Throughput (M cycles/s, median of {reps}); flagged pools marked\n"
    );
    header(&mut out, &lead, &columns);
    for (cell, sums) in cells.iter().zip(&all) {
        let mut line = row_lead(cell);
        for &c in &columns {
            let v = match find(sums, c) {
                Some(s) => match s.flag() {
                    Some(f) => format!(" {} ({f}) |", mcps(s.throughput)),
                    None => format!(" {} |", mcps(s.throughput)),
                },
                None => " - |".into(),
            };
            line.push_str(&v);
        }
        let _ = writeln!(out, "{line}");
    }

    // Ours, then the budget floor: where even that lock-free floor, which takes part in
    // tokio's budget as pool/tokio does, is below the best peer, no pool that respects the
    // budget can reach 1.0 in the cell on this runtime.
    let ours: Vec<Contender> = columns
        .iter()
        .copied()
        .filter(|c| c.is_ours() || *c == Contender::FloorArrayQueueBudget)
        .collect();
    let _ = writeln!(
        out,
        "\n### Ratio to the best peer that was neither stuck, starved nor erred \
         (median of per-repetition ratios)\n"
    );
    let mut names = vec!["cycle", "workers", "size", "best peer", "its M/s"];
    names.extend(ours.iter().map(|c| c.name()));
    names.extend(["target", "met (pool/tokio)"]);
    let _ = writeln!(out, "| {} |", names.join(" | "));
    let _ = writeln!(out, "|{}", names.iter().map(|_| "---|").collect::<String>());
    for (cell, sums) in cells.iter().zip(&all) {
        let mut line = row_lead(cell);
        match best_peer(sums) {
            Some(b) => {
                let _ = write!(line, " {} | {} |", b.contender.name(), mcps(b.throughput));
            }
            None => line.push_str(" (none sound) | - |"),
        }
        for &c in &ours {
            let v = find(sums, c)
                .and_then(|s| s.ratio)
                .map_or("-".into(), |r| format!("{r:.2}"));
            let _ = write!(line, " {v} |");
        }
        let met = find(sums, Contender::PoolTokio).map_or("-", |s| match s.ratio {
            Some(r) if r >= cell.target() && s.flagged == 0 => "yes",
            Some(_) => "**no**",
            None => "-",
        });
        let _ = write!(line, " {:.1} | {met} |", cell.target());
        let _ = writeln!(out, "{line}");
    }

    let _ = writeln!(
        out,
        "\n### Acquire wait p50 / p99 / max (µs; an acquire ready on its first poll waited 0)\n"
    );
    header(&mut out, &lead, &columns);
    for (cell, sums) in cells.iter().zip(&all) {
        let mut line = row_lead(cell);
        for &c in &columns {
            let v = match find(sums, c) {
                Some(s) if s.waits.count() > 0 => format!(
                    " {} / {} / {} |",
                    us(s.waits.quantile(0.5)),
                    us(s.waits.quantile(0.99)),
                    us(s.waits.max())
                ),
                Some(_) => " (none) |".into(),
                None => " - |".into(),
            };
            line.push_str(&v);
        }
        let _ = writeln!(out, "{line}");
    }

    let _ = writeln!(
        out,
        "\n### Fairness: Jain's index of per-worker cycles (median), workers with no cycle \
         in the window (most in one repetition), workers hung after it\n"
    );
    header(&mut out, &lead, &columns);
    for (cell, sums) in cells.iter().zip(&all) {
        let mut line = row_lead(cell);
        for &c in &columns {
            let v = match find(sums, c) {
                Some(s) => {
                    let mut v = format!(" {:.3}", s.jain);
                    if s.starved > 0 {
                        let _ = write!(v, " starved {}", s.starved);
                    }
                    if s.stuck > 0 {
                        let _ = write!(v, " stuck {}", s.stuck);
                    }
                    if s.errors > 0 {
                        let _ = write!(v, " erred {}", s.errors);
                    }
                    v + " |"
                }
                None => " - |".into(),
            };
            line.push_str(&v);
        }
        let _ = writeln!(out, "{line}");
    }

    let errors: Vec<String> = cells
        .iter()
        .zip(&all)
        .flat_map(|(cell, sums)| {
            sums.iter().filter_map(move |s| {
                s.first_error.as_ref().map(|e| {
                    format!(
                        "- {} {}x{} {}: {e}",
                        cell.hold.name(),
                        cell.workers,
                        cell.size,
                        s.contender.name()
                    )
                })
            })
        })
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(out, "\n### Errors\n\n{}", errors.join("\n"));
    }
    out
}

/// One CSV row per measurement.
pub fn csv(cells: &[Cell], records: &[Record]) -> String {
    let mut out = String::from(
        "cycle,workers,size,rep,pool,cycles,secs,cycles_per_sec,ratio_to_best_peer,best_peer,\
         jain,starved,stuck,errors,wait_p50_ns,wait_p99_ns,wait_max_ns,flag\n",
    );
    for r in records {
        let cell = cells[r.cell];
        let here: Vec<&Record> = records.iter().filter(|x| x.cell == r.cell).collect();
        let (ratio, best) = match rep_ratio(&here, r.rep, r.contender) {
            Some((x, b)) => (format!("{x:.4}"), b.name()),
            None => (String::new(), ""),
        };
        let s = &r.sample;
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{:.6},{:.0},{},{},{:.4},{},{},{},{},{},{},{}",
            cell.hold.name(),
            cell.workers,
            cell.size,
            r.rep,
            r.contender.name(),
            s.cycles,
            s.secs,
            s.throughput(),
            ratio,
            best,
            s.jain(),
            s.starved(),
            s.stuck,
            s.errors,
            s.waits.quantile(0.5).as_nanos(),
            s.waits.quantile(0.99).as_nanos(),
            s.waits.max().as_nanos(),
            s.flag().unwrap_or("")
        );
    }
    out
}

const COLORS: [&str; 11] = [
    "#d62728", "#ff7f0e", "#e377c2", "#1f77b4", "#2ca02c", "#17becf", "#9467bd", "#8c564b",
    "#bcbd22", "#7f7f7f", "#333333",
];

/// An SVG chart: for each cycle mode, median throughput and p99 wait per cell (log scales),
/// one line per pool; flagged points are drawn hollow.
pub fn svg(cells: &[Cell], records: &[Record], reps: usize) -> String {
    let columns: Vec<Contender> = Contender::ALL
        .into_iter()
        .filter(|c| records.iter().any(|r| r.contender == *c))
        .collect();
    let modes: Vec<Hold> = {
        let mut m: Vec<Hold> = Vec::new();
        for c in cells {
            if !m.contains(&c.hold) {
                m.push(c.hold);
            }
        }
        m
    };
    let all: Vec<Vec<Summary>> = (0..cells.len())
        .map(|i| summarize(records, i, reps))
        .collect();
    let (pw, ph, left, top, gap) = (1100.0, 260.0, 70.0, 40.0, 70.0);
    let legend_h = 30.0;
    let height = top + legend_h + (modes.len() * 2) as f64 * (ph + gap);
    let width = left + pw + 30.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{left}" y="20" font-size="15">Connection pools side by side: throughput and p99 acquire wait per cell (workers x size), median of {reps}; hollow = stuck/starved/erred</text>"#
    );
    for (i, c) in columns.iter().enumerate() {
        let x = left + (i as f64) * 100.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{}" width="10" height="10" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            top - 8.0,
            COLORS[i % COLORS.len()],
            x + 14.0,
            top + 1.0,
            c.name()
        );
    }
    let mut y0 = top + legend_h;
    for hold in modes {
        let idx: Vec<usize> = (0..cells.len())
            .filter(|&i| cells[i].hold == hold)
            .collect();
        for metric in 0..2 {
            let value = |sum: &Summary| -> f64 {
                if metric == 0 {
                    sum.throughput
                } else {
                    sum.waits.quantile(0.99).as_secs_f64() * 1e6
                }
            };
            let vals: Vec<f64> = idx
                .iter()
                .flat_map(|&i| all[i].iter().map(value))
                .filter(|v| *v > 0.0)
                .collect();
            let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = vals.iter().copied().fold(0.0, f64::max);
            let (lo, hi) = if vals.is_empty() {
                (1.0, 10.0)
            } else {
                (
                    10f64.powf(lo.log10().floor()),
                    10f64.powf(hi.log10().ceil()),
                )
            };
            let (llo, lhi) = (lo.log10(), hi.log10().max(lo.log10() + 1.0));
            let ymap = |v: f64| y0 + ph - (v.max(lo).log10() - llo) / (lhi - llo) * ph;
            let step = pw / idx.len().max(1) as f64;
            let xmap = |k: usize| left + step * (k as f64 + 0.5);
            let title = if metric == 0 {
                format!("{}: throughput (cycles/s, log)", hold.name())
            } else {
                format!(
                    "{}: p99 acquire wait (µs, log; 0 = always ready at once)",
                    hold.name()
                )
            };
            let _ = writeln!(
                s,
                r##"<text x="{left}" y="{}" font-size="13">{title}</text><rect x="{left}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>"##,
                y0 - 6.0
            );
            let mut p = llo.ceil() as i32;
            while f64::from(p) <= lhi {
                let y = ymap(10f64.powi(p));
                let label = if metric == 0 {
                    format!("1e{p}")
                } else {
                    us(Duration::from_secs_f64(10f64.powi(p) / 1e6))
                };
                let _ = writeln!(
                    s,
                    r##"<line x1="{left}" x2="{}" y1="{y}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{label}</text>"##,
                    left + pw,
                    left - 4.0,
                    y + 4.0
                );
                p += 1;
            }
            for (k, &i) in idx.iter().enumerate() {
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{}" text-anchor="middle" font-size="9">{}x{}</text>"#,
                    xmap(k),
                    y0 + ph + 12.0,
                    cells[i].workers,
                    cells[i].size
                );
            }
            for (ci, &c) in columns.iter().enumerate() {
                let color = COLORS[ci % COLORS.len()];
                let mut points = Vec::new();
                let mut dots = String::new();
                for (k, &i) in idx.iter().enumerate() {
                    let Some(sum) = all[i].iter().find(|x| x.contender == c) else {
                        continue;
                    };
                    let v = value(sum);
                    let (x, y) = (xmap(k), ymap(v.max(lo)));
                    points.push(format!("{x:.1},{y:.1}"));
                    let fill = if sum.flagged > 0 { "white" } else { color };
                    let _ = write!(
                        dots,
                        r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{fill}" stroke="{color}"/>"#
                    );
                }
                let _ = writeln!(
                    s,
                    r#"<polyline fill="none" stroke="{color}" stroke-width="1.3" points="{}"/>{dots}"#,
                    points.join(" ")
                );
            }
            y0 += ph + gap;
        }
    }
    s.push_str("</svg>\n");
    s
}
