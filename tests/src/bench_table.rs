//! The one table `just bench` ends with: every figure the suites measured, its target where the
//! platform has one, the floor measured in the same run on the same machine (what the figure
//! would be if coderun added nothing), and the ratio of the two. A JSON copy goes to
//! `{target dir}/bench/`, one file per run plus `latest.json`; the previous `latest.json`, when
//! there is one, is printed beside the new figures so two runs compare at a glance.

use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Which way a figure is better.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Goal {
    /// At least the target (rates).
    AtLeast,
    /// At most the target (latencies, memory).
    AtMost,
}

/// What a figure is measured against.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    pub goal: Goal,
    /// The bound itself, or, with `times_floor`, a multiple of the floor.
    pub value: f64,
    /// The bound is `value` × the floor (e.g. "p50 ≤ 2× the bare interpreter").
    pub times_floor: bool,
}

impl Target {
    pub fn at_least(value: f64) -> Self {
        Self {
            goal: Goal::AtLeast,
            value,
            times_floor: false,
        }
    }

    pub fn at_most(value: f64) -> Self {
        Self {
            goal: Goal::AtMost,
            value,
            times_floor: false,
        }
    }

    /// At most `factor` × the floor.
    pub fn floor_times(factor: f64) -> Self {
        Self {
            goal: Goal::AtMost,
            value: factor,
            times_floor: true,
        }
    }

    /// The bound in the figure's unit, given the floor (none when it needs a missing floor).
    fn bound(&self, floor: Option<f64>) -> Option<f64> {
        if self.times_floor {
            floor.map(|f| f * self.value)
        } else {
            Some(self.value)
        }
    }

    fn describe(&self, unit: &str) -> String {
        let op = match self.goal {
            Goal::AtLeast => "≥",
            Goal::AtMost => "≤",
        };
        if self.times_floor {
            format!("{op} {}× floor", self.value)
        } else {
            format!("{op} {} {unit}", number(self.value))
        }
    }
}

/// The same measure with nothing of coderun's in the way.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Floor {
    /// What was measured, e.g. "redis-benchmark XADD, 200 connections".
    pub what: String,
    pub value: f64,
}

/// One measured figure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    pub suite: String,
    pub name: String,
    pub value: f64,
    /// `req/s`, `ms`, `MiB`, `launches/s` …
    pub unit: String,
    pub target: Option<Target>,
    pub floor: Option<Floor>,
    /// `value / floor`.
    pub ratio: Option<f64>,
    /// Whether the target holds; `None` without a target.
    pub met: Option<bool>,
    /// How it was measured (counts, conditions), printed under the table.
    pub note: String,
}

/// The figures of one `coderun-bench` run, in the order measured.
#[derive(Default)]
pub struct Table {
    figures: Mutex<Vec<Figure>>,
}

/// The JSON copy of a run.
#[derive(Serialize, Deserialize)]
struct Saved {
    started_at: String,
    quick: bool,
    cpus: usize,
    figures: Vec<Figure>,
}

impl Table {
    /// Records a figure (and prints it as a line, so a long suite shows progress).
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        suite: &str,
        name: &str,
        value: f64,
        unit: &str,
        target: Option<Target>,
        floor: Option<Floor>,
        note: impl Into<String>,
    ) {
        let ratio = floor
            .as_ref()
            .filter(|f| f.value > 0.0)
            .map(|f| value / f.value);
        let met = target.as_ref().and_then(|t| {
            let bound = t.bound(floor.as_ref().map(|f| f.value))?;
            Some(match t.goal {
                Goal::AtLeast => value >= bound,
                Goal::AtMost => value <= bound,
            })
        });
        let figure = Figure {
            suite: suite.to_owned(),
            name: name.to_owned(),
            value,
            unit: unit.to_owned(),
            target,
            floor,
            ratio,
            met,
            note: note.into(),
        };
        println!(
            "  {suite}: {name} = {} {unit}{}",
            number(value),
            if figure.note.is_empty() {
                String::new()
            } else {
                format!("   ({})", figure.note)
            }
        );
        self.figures
            .lock()
            .expect("the bench table's lock")
            .push(figure);
    }

    /// Prints the table and writes its JSON copy; returns where.
    pub fn finish(
        &self,
        started_at: chrono::DateTime<chrono::Utc>,
        quick: bool,
    ) -> anyhow::Result<PathBuf> {
        let figures = self.figures.lock().expect("the bench table's lock").clone();
        let dir = bench_dir();
        std::fs::create_dir_all(&dir)?;
        let latest = dir.join("latest.json");
        let previous: Option<Saved> = std::fs::read(&latest)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let before = |f: &Figure| {
            previous.as_ref().and_then(|p| {
                p.figures
                    .iter()
                    .find(|o| o.suite == f.suite && o.name == f.name)
                    .map(|o| number(o.value))
            })
        };

        let header = [
            "suite", "figure", "measured", "target", "floor", "ratio", "met", "before",
        ];
        let mut rows: Vec<[String; 8]> = vec![header.map(str::to_owned)];
        for f in &figures {
            rows.push([
                f.suite.clone(),
                f.name.clone(),
                format!("{} {}", number(f.value), f.unit),
                f.target
                    .as_ref()
                    .map(|t| t.describe(&f.unit))
                    .unwrap_or_default(),
                f.floor
                    .as_ref()
                    .map(|fl| format!("{} ({})", number(fl.value), fl.what))
                    .unwrap_or_default(),
                f.ratio.map(|r| format!("{r:.2}×")).unwrap_or_default(),
                match f.met {
                    Some(true) => "yes".to_owned(),
                    Some(false) => "NO".to_owned(),
                    None => String::new(),
                },
                before(f).unwrap_or_default(),
            ]);
        }
        let widths: Vec<usize> = (0..8)
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        println!();
        for (i, row) in rows.iter().enumerate() {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            println!("{}", line.join("  ").trim_end());
            if i == 0 {
                println!("{}", "-".repeat(widths.iter().sum::<usize>() + 2 * 7));
            }
        }
        if let Some(p) = &previous {
            println!("(before: latest.json of {})", p.started_at);
        }

        let saved = Saved {
            started_at: started_at.to_rfc3339(),
            quick,
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            figures,
        };
        let json = serde_json::to_vec_pretty(&saved)?;
        let file = dir.join(format!(
            "bench-{}.json",
            started_at.format("%Y%m%dT%H%M%SZ")
        ));
        std::fs::write(&file, &json)?;
        std::fs::write(&latest, &json)?;
        Ok(file)
    }
}

/// `{CARGO_TARGET_DIR or target}/bench`.
fn bench_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"))
        .join("bench")
}

/// A figure as people read it: three significant digits or whole units.
fn number(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_relative_to_the_floor_is_judged_against_it() {
        let table = Table::default();
        let floor = |v| {
            Some(Floor {
                what: "bare".into(),
                value: v,
            })
        };
        table.record(
            "s",
            "a",
            50.0,
            "ms",
            Some(Target::floor_times(2.0)),
            floor(30.0),
            "",
        );
        table.record(
            "s",
            "b",
            70.0,
            "ms",
            Some(Target::floor_times(2.0)),
            floor(30.0),
            "",
        );
        table.record(
            "s",
            "c",
            1200.0,
            "req/s",
            Some(Target::at_least(1000.0)),
            None,
            "",
        );
        table.record(
            "s",
            "d",
            9.0,
            "ms",
            Some(Target::floor_times(2.0)),
            None,
            "",
        );
        let figures = table.figures.lock().unwrap();
        assert_eq!(figures[0].met, Some(true));
        assert_eq!(figures[0].ratio.map(|r| (r * 100.0).round()), Some(167.0));
        assert_eq!(figures[1].met, Some(false));
        assert_eq!(figures[2].met, Some(true));
        // No floor measured: the target cannot be judged, and is not claimed met.
        assert_eq!(figures[3].met, None);
    }
}
