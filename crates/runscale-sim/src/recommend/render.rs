//! The recommendation as a text table per pool, with a YAML snippet of the settings.

use std::fmt::Write as _;

use super::{PoolRecommendation, Recommendation, Row, SearchKind};
use crate::report::{align, fmt_hours, header, human_secs};

impl Recommendation {
    /// The header (trace, world, pools), then per pool the rule, the search, a table of the
    /// recommended, current and reference settings and the baselines, and a YAML snippet.
    pub fn to_table(&self) -> String {
        let mut out = header(&self.trace, &self.boot, &self.world);
        for p in &self.pools {
            out.push('\n');
            out.push_str(&p.to_table());
        }
        if self.pools.iter().any(|p| p.recommended.is_some()) {
            out.push('\n');
            out.push_str(&self.yaml());
        }
        out
    }

    /// The recommended settings as YAML for runscale's configuration (a pool's other keys
    /// stay as they are).
    pub fn yaml(&self) -> String {
        let mut out =
            String::from("# recommended settings (the pools' other keys unchanged)\npools:\n");
        for p in &self.pools {
            let Some(r) = &p.recommended else { continue };
            // A JSON string is a valid YAML double-quoted scalar.
            let name = serde_json::to_string(&p.pool).unwrap_or_default();
            let _ = writeln!(out, "  - name: {name}");
            for k in &r.setting.0 {
                let _ = writeln!(out, "    {}: {}", k.name(), k.yaml());
            }
        }
        out
    }
}

impl PoolRecommendation {
    fn to_table(&self) -> String {
        let mut out = String::new();
        let dims: Vec<String> = self
            .grid
            .iter()
            .map(|d| format!("{} ({})", d.name, d.values.len()))
            .collect();
        let search = match self.search {
            SearchKind::FullGrid => "every setting",
            SearchKind::Coordinate => "one dimension at a time from the current setting",
        };
        let _ = writeln!(
            out,
            "pool {}: {} jobs; grid {} = {} settings, searched {search}: {} simulations (budget {}), plus {} of the baselines",
            self.pool,
            self.jobs,
            dims.join(" × "),
            self.grid_size,
            self.simulations,
            self.budget,
            self.baselines.len()
        );
        let _ = writeln!(out, "rule: {}", self.rule);
        if !self.baselines.is_empty() {
            let _ = writeln!(
                out,
                "baselines run with the recommended max; × off = paid ÷ the reference's"
            );
        }
        let mut rows = vec![
            [
                "", "warm", "max", "reuse", "paid h", "× off", "mean", "p50", "p95", "pareto",
            ]
            .map(str::to_owned)
            .to_vec(),
        ];
        match &self.recommended {
            Some(r) => rows.push(cells("recommended", r)),
            None => {
                let _ = writeln!(out, "no simulated setting satisfies the rule");
            }
        }
        rows.push(cells("current", &self.current));
        rows.push(cells("warm off (reference)", &self.reference));
        for b in &self.baselines {
            rows.push(cells(&b.policy, b));
        }
        out.push_str(&align(&rows));
        out
    }
}

fn cells(label: &str, r: &Row) -> Vec<String> {
    let value = |name: &str| {
        r.setting
            .get(name)
            .map_or("-".to_owned(), ToString::to_string)
    };
    let pareto = if r.lower_bound {
        "bound"
    } else if r.pareto {
        "yes"
    } else {
        "no"
    };
    let label = if r.ran_clean() || r.lower_bound {
        label.to_owned()
    } else {
        format!(
            "{label} ({} violations)",
            r.violations + (r.jobs - r.jobs_run.min(r.jobs)) as u64
        )
    };
    vec![
        label,
        value("warm"),
        value("max"),
        value("reuse"),
        fmt_hours(r.paid_runner_s),
        format!("{:.2}", r.cost_ratio),
        human_secs(r.wait.mean_s),
        human_secs(r.wait.p50_s),
        human_secs(r.wait.p95_s),
        pareto.to_owned(),
    ]
}
