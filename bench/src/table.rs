//! The report: one row per figure of issue 5, with the baseline and the ratio.

use std::fmt::Write;

/// One figure.
#[derive(Debug, Clone)]
pub struct Row {
    pub what: String,
    pub target: String,
    pub ours: String,
    pub baseline: String,
    /// `baseline / ours` (or whichever way the target reads), when there is one.
    pub ratio: String,
    pub met: Option<bool>,
}

/// Markdown, as pasted in the README.
pub fn render(rows: &[Row]) -> String {
    let mut out = String::from(
        "| figure | target | svcproxy | baseline | ratio | met |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "-",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            r.what, r.target, r.ours, r.baseline, r.ratio, met
        );
    }
    out
}
