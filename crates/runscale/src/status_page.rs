//! The status page at `/`: server-rendered HTML of every pool (waiting / booting / idle / busy,
//! limits, the last plan's actions with reasons, errors, rate-limit budget), refreshed in place
//! by a few lines of JavaScript that re-fetch the page. No build step, no external assets.

use std::fmt::Write;

use runscale_core::Timestamp;
use runscale_core::reconciler::PoolStatus;

/// Escapes text for HTML element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Rate-limit budget left per account, for the header.
pub type Budgets = Vec<(String, u64)>;

/// Renders the whole page.
pub fn render(pools: &[PoolStatus], budgets: &Budgets, now: Timestamp, version: &str) -> String {
    let mut h = String::with_capacity(8192 + pools.len() * 512);
    h.push_str(concat!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        "<title>runscale</title><style>",
        "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1b1f24;background:#fafbfc}",
        "h1{font-size:1.3rem;margin:0 0 .2rem}.sub{color:#57606a;margin-bottom:1rem}",
        "table{border-collapse:collapse;width:100%;background:#fff;margin-bottom:1.2rem}",
        "th,td{border-bottom:1px solid #d0d7de;padding:.35rem .6rem;text-align:left;font-size:.9rem}",
        "th{background:#f3f4f6}td.n{text-align:right;font-variant-numeric:tabular-nums}",
        ".err{color:#b42318}.ok{color:#1a7f37}.dim{color:#57606a}",
        "</style></head><body>\n"
    ));
    let _ = writeln!(
        h,
        "<h1>runscale</h1><div class=\"sub\">version {} · {} pools · updated <span id=\"updated\">{}</span></div>",
        esc(version),
        pools.len(),
        now.format("%Y-%m-%d %H:%M:%S UTC")
    );
    if !budgets.is_empty() {
        h.push_str("<div class=\"sub\" id=\"budgets\">API budget left: ");
        for (i, (account, left)) in budgets.iter().enumerate() {
            if i > 0 {
                h.push_str(", ");
            }
            let _ = write!(h, "{} <b>{}</b>", esc(account), left);
        }
        h.push_str("</div>\n");
    }
    h.push_str(concat!(
        "<table id=\"pools\"><thead><tr><th>pool</th><th>provider</th><th>backend</th>",
        "<th>waiting</th><th>booting</th><th>idle</th><th>busy</th><th>desired</th>",
        "<th>min idle / max</th><th>CI read</th><th>last pass</th><th>next pass</th><th>status</th></tr></thead><tbody>\n"
    ));
    for p in pools {
        let o = p.last_observation.clone().unwrap_or_default();
        let desired = p
            .last_plan
            .as_ref()
            .map_or("–".to_owned(), |pl| pl.desired_instances.to_string());
        let (min_idle, max) = p
            .last_plan
            .as_ref()
            .map_or((p.limits.min_idle, p.limits.max), |pl| {
                (pl.limits.min_idle, pl.limits.max)
            });
        let status = match &p.last_error {
            Some(e) => format!(
                "<span class=\"err\" title=\"{}\">{} ({} in a row)</span>",
                esc(&e.message),
                esc(e.kind),
                p.consecutive_failures
            ),
            None if p.passes == 0 => "<span class=\"dim\">starting</span>".to_owned(),
            None => "<span class=\"ok\">ok</span>".to_owned(),
        };
        let ts =
            |t: Option<Timestamp>| t.map_or("–".to_owned(), |t| t.format("%H:%M:%S").to_string());
        // How old the counts are: stale ones (the CI system not read afresh within two
        // intervals) are marked, so an outage does not show old numbers as if known.
        let read = match (p.view_age_secs, p.stale) {
            (Some(age), false) => format!("<span class=\"ok\">{age:.0}s ago</span>"),
            (Some(age), true) => {
                format!(
                    "<span class=\"err\" title=\"counts are from then\">stale: {age:.0}s ago</span>"
                )
            }
            (None, _) if p.passes == 0 => "<span class=\"dim\">–</span>".to_owned(),
            (None, _) => "<span class=\"err\">stale: never read</span>".to_owned(),
        };
        let _ = writeln!(
            h,
            "<tr data-pool=\"{pool}\"><td>{pool}</td><td>{prov}</td><td>{back}</td><td class=\"n\">{w}</td><td class=\"n\">{b}</td><td class=\"n\">{i}</td><td class=\"n\">{bu}</td><td class=\"n\">{d}</td><td class=\"n\">{mi} / {mx}</td><td data-stale=\"{stale}\">{read}</td><td>{lp}</td><td>{np}</td><td>{st}</td></tr>",
            pool = esc(p.pool.as_str()),
            prov = esc(&p.provider),
            back = esc(&p.backend),
            w = o.waiting,
            b = o.instances_booting,
            i = o.runners_idle,
            bu = o.runners_busy,
            d = desired,
            mi = min_idle,
            mx = max,
            stale = p.stale,
            read = read,
            lp = ts(p.last_pass_at),
            np = ts(p.next_pass_at),
            st = status,
        );
    }
    h.push_str("</tbody></table>\n");

    h.push_str(concat!(
        "<h2 style=\"font-size:1.05rem\">Recent actions</h2><table id=\"actions\"><thead><tr>",
        "<th>time</th><th>pool</th><th>action</th><th>reason</th><th>target</th><th>outcome</th>",
        "</tr></thead><tbody>\n"
    ));
    let mut actions: Vec<(
        &PoolStatus,
        &runscale_core::reconciler::status::ActionRecord,
    )> = pools
        .iter()
        .flat_map(|p| p.recent_actions.iter().map(move |a| (p, a)))
        .collect();
    actions.sort_by_key(|a| std::cmp::Reverse(a.1.at));
    for (p, a) in actions.into_iter().take(50) {
        let class = match a.outcome {
            "ok" => "ok",
            "dry_run" | "kept_busy" | "skipped" => "dim",
            _ => "err",
        };
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{class}\">{}</td></tr>",
            a.at.format("%H:%M:%S"),
            esc(p.pool.as_str()),
            esc(a.action),
            esc(a.reason),
            esc(&a.target),
            esc(a.outcome),
        );
    }
    h.push_str("</tbody></table>\n");
    // Refresh in place: fetch the page again and swap the body, keeping scroll position.
    h.push_str(concat!(
        "<script>\nsetInterval(async()=>{try{const r=await fetch(location.pathname,{cache:'no-store'});",
        "if(!r.ok)return;const t=await r.text();const d=new DOMParser().parseFromString(t,'text/html');",
        "document.body.replaceWith(d.body);}catch(e){}},2000);\n</script>\n</body></html>\n"
    ));
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_untrusted_text() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    fn pool(view_age_secs: Option<f64>, stale: bool, passes: u64) -> PoolStatus {
        use runscale_core::reconciler::status::LimitsView;
        PoolStatus {
            pool: runscale_core::PoolId::new("linux"),
            provider: "gh".into(),
            backend: "local".into(),
            limits: LimitsView {
                min_idle: 0,
                max: 4,
                max_booting: 4,
                launches_per_minute: 0,
                boot_timeout_secs: 60.0,
                idle_timeout_secs: 60.0,
                max_lifetime_secs: None,
                scale_down_delay_secs: 0.0,
                runners_per_instance: 1,
                ephemeral: true,
                schedules: Vec::new(),
            },
            last_observation: None,
            view_age_secs,
            stale,
            last_plan: None,
            last_pass_at: None,
            last_error: None,
            consecutive_failures: 0,
            next_pass_at: None,
            passes,
            recent_actions: Default::default(),
        }
    }

    #[test]
    fn counts_show_their_age_and_stale_ones_are_marked() {
        let now = chrono::Utc::now();
        let fresh = render(&[pool(Some(3.2), false, 4)], &Vec::new(), now, "0");
        assert!(
            fresh.contains("data-stale=\"false\"><span class=\"ok\">3s ago"),
            "{fresh}"
        );
        let old = render(&[pool(Some(95.0), true, 9)], &Vec::new(), now, "0");
        assert!(old.contains("data-stale=\"true\"><span class=\"err\" title=\"counts are from then\">stale: 95s ago"), "{old}");
        let never = render(&[pool(None, true, 2)], &Vec::new(), now, "0");
        assert!(never.contains("stale: never read"), "{never}");
    }

    #[test]
    fn renders_an_empty_page() {
        let page = render(&[], &vec![("gh".into(), 4999)], chrono::Utc::now(), "0.1.0");
        assert!(page.contains("<table id=\"pools\">"));
        assert!(page.contains("gh <b>4999</b>"));
        assert!(page.ends_with("</html>\n"));
    }
}
