//! `signpost-bench report [--dir reports]`: one report from the benchmarks'
//! own files in `dir` (`bench-proxy-nft.json`, `bench-dns-<N>.json`,
//! `bench-endpoints*.json`, `bench-proxy-ipvs.json`, `bench-model.json`):
//! `bench.json` with every target of the performance issue, its measured
//! ratios and whether it is met, and `bench.html` with the same table and
//! one log-log plot per cost (Signpost against its upstream peer over the
//! number of Services), drawn as inline SVG so the page needs nothing else.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Value, json};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One target: what is compared, the bound, and the ratios measured.
struct Target {
    id: &'static str,
    what: String,
    bound: String,
    /// (label, measured value) per scale point.
    measured: Vec<(String, f64)>,
    met: Option<bool>,
    note: String,
}

/// One plot: a cost over the number of Services, one line per component.
struct Plot {
    title: String,
    unit: &'static str,
    x: &'static str,
    lines: Vec<(String, Vec<(f64, f64)>)>,
}

fn read(dir: &Path, name: &str) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join(name)).ok()?;
    serde_json::from_str(&text).ok()
}

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_f64().filter(|x| x.is_finite())
}

/// Whether every measured value holds `ok`; `None` when nothing was measured.
/// The measurements at one scale point.
fn at(measured: &[(String, f64)], point: &str) -> Vec<(String, f64)> {
    measured
        .iter()
        .filter(|(n, _)| n == point)
        .cloned()
        .collect()
}

fn all(measured: &[(String, f64)], ok: impl Fn(f64) -> bool) -> Option<bool> {
    (!measured.is_empty()).then(|| measured.iter().all(|(_, v)| ok(*v)))
}

fn proxy_nft(dir: &Path, targets: &mut Vec<Target>, plots: &mut Vec<Plot>) {
    let Some(r) = read(dir, "bench-proxy-nft.json") else {
        targets.push(missing("1", "nftables full sync"));
        targets.push(missing("2", "nftables one endpoint change"));
        return;
    };
    let Some(sizes) = r.as_object() else { return };
    let mut by_n: Vec<(f64, &Value)> = sizes
        .iter()
        .filter_map(|(k, v)| Some((k.parse::<f64>().ok()?, v)))
        .collect();
    by_n.sort_by(|a, b| a.0.total_cmp(&b.0));
    let series = |who: &str, field: &str| -> Vec<(f64, f64)> {
        by_n.iter()
            .filter_map(|(n, v)| Some((*n, num(v, &[who, field])?)))
            .collect()
    };
    let ratios = |field: &str| -> Vec<(String, f64)> {
        by_n.iter()
            .filter_map(|(n, v)| {
                Some((
                    format!("{n}"),
                    num(v, &["ratio_signpost_over_kube_proxy", field])?,
                ))
            })
            .collect()
    };
    let full = ratios("full");
    let floor = series("signpost", "kernel_commit_ms");
    let kp_full = series("kube_proxy_nftables", "full_sync_ms");
    let floor_note = floor
        .iter()
        .map(|(n, f)| {
            let kp = kp_full.iter().find(|(m, _)| m == n).map(|(_, k)| *k);
            match kp {
                Some(k) => format!(
                    "{n} Services: the kernel's commit alone takes {f:.0} ms = {:.2}× kube-proxy's whole sync",
                    f / k
                ),
                None => format!("{n} Services: the kernel's commit alone takes {f:.0} ms"),
            }
        })
        .collect::<Vec<_>>()
        .join("; ");
    targets.push(Target {
        id: "1",
        what: "nftables full sync (N Services × 5 endpoints), Signpost / kube-proxy".into(),
        bound: "≤ 0.5".into(),
        met: all(&full, |v| v <= 0.5),
        measured: full,
        note: floor_note,
    });
    let change = ratios("one_change");
    let flat = series("signpost", "one_change_sync_ms");
    let small_floor = series("signpost", "kernel_small_commit_ms");
    let element_floor = series("signpost", "kernel_element_commit_ms");
    let kp_change = series("kube_proxy_nftables", "one_change_sync_ms");
    let floors = |floor: &[(f64, f64)]| {
        floor
            .iter()
            .map(|(n, f)| match kp_change.iter().find(|(m, _)| m == n) {
                Some((_, k)) => format!("{n} → {f:.1} ms = {:.2}× kube-proxy's change", f / k),
                None => format!("{n} → {f:.1} ms"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let flat_note = format!(
        "Signpost's one-change sync by size: {}. The kernel's commit of one set element (the floor under an endpoint change, which only moves backend-map elements): {}. Of one new rule (what a rule-per-endpoint layout pays): {}",
        flat.iter()
            .map(|(n, v)| format!("{n} → {v:.1} ms"))
            .collect::<Vec<_>>()
            .join(", "),
        floors(&element_floor),
        floors(&small_floor)
    );
    let at_10k = at(&change, "10000");
    // The data plane alone (`signpost-bench nft-plane`, no API server),
    // which reaches 50k addresses.
    let plane = read(dir, "bench-nft-plane.json");
    let plane_series = |field: &str| -> Vec<(f64, f64)> {
        let mut v: Vec<(f64, f64)> = plane
            .as_ref()
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(n, f)| Some((n.parse().ok()?, num(f, &[field])?)))
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    };
    let (plane_plan, plane_commit, plane_desired) = (
        plane_series("one_change_plan_p50_ms"),
        plane_series("one_change_commit_p50_ms"),
        plane_series("desired_one_change_p50_ms"),
    );
    let plane_note = if plane_commit.is_empty() {
        String::new()
    } else {
        format!(
            " The data plane alone (signpost-bench nft-plane, no API server), one endpoint change, p50: {}. The proxy's desired table after one slice change, p50: {}.",
            plane_commit
                .iter()
                .zip(&plane_plan)
                .map(|((n, c), (_, p))| format!(
                    "{n} → kernel commit {c:.2} ms, planning {p:.2} ms"
                ))
                .collect::<Vec<_>>()
                .join("; "),
            plane_desired
                .iter()
                .map(|(n, d)| format!("{n} → {d:.3} ms"))
                .collect::<Vec<_>>()
                .join("; ")
        )
    };
    targets.push(Target {
        id: "2",
        what: "nftables one endpoint change at 10k Services, Signpost / kube-proxy (and flat over size)".into(),
        bound: "≤ 0.1".into(),
        met: all(&at_10k, |v| v <= 0.1),
        measured: change,
        note: flat_note + &plane_note,
    });
    plots.push(Plot {
        title: "nftables full sync".into(),
        unit: "ms",
        x: "Services",
        lines: vec![
            ("signpost".into(), series("signpost", "full_sync_ms")),
            ("kube-proxy".into(), kp_full.clone()),
            ("kernel commit (floor)".into(), floor),
        ],
    });
    plots.push(Plot {
        title: "nftables one endpoint change".into(),
        unit: "ms",
        x: "Services",
        lines: vec![
            ("signpost".into(), flat),
            ("kube-proxy".into(), kp_change),
            ("kernel commit of one rule (floor)".into(), small_floor),
        ],
    });
    if !plane_commit.is_empty() {
        plots.push(Plot {
            title: "nftables data plane alone: one endpoint change".into(),
            unit: "ms",
            x: "addresses",
            lines: vec![
                ("kernel commit".into(), plane_commit),
                ("planning (userspace)".into(), plane_plan),
                ("desired table (userspace)".into(), plane_desired),
                ("full sync commit".into(), plane_series("full_commit_ms")),
            ],
        });
    }
}

/// The run files `<prefix>*.json` in `dir`, each with its number of
/// Services (`default` when the file does not say), smallest first.
fn scale_runs(dir: &Path, prefix: &str, default: Option<f64>) -> Vec<(f64, Value)> {
    let mut runs: Vec<(f64, Value)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(prefix) && n.ends_with(".json")
        })
        .filter_map(|e| {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok()?;
            Some((num(&v, &["services"]).or(default)?, v))
        })
        .collect();
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    runs
}

fn dns(dir: &Path, targets: &mut Vec<Target>, plots: &mut Vec<Plot>) {
    let runs = scale_runs(dir, "bench-dns", None);
    if runs.is_empty() {
        targets.push(missing("3", "DNS"));
        return;
    }
    let pick = |path: &[&str]| -> Vec<(String, f64)> {
        runs.iter()
            .filter_map(|(n, v)| Some((format!("{n}"), num(v, path)?)))
            .collect()
    };
    let series = |path: &[&str]| -> Vec<(f64, f64)> {
        runs.iter()
            .filter_map(|(n, v)| Some((*n, num(v, path)?)))
            .collect()
    };
    let qps = pick(&["ratios_signpost_over_coredns", "qps"]);
    // Past 10k the benchmark adds headless Services only (the API server's
    // ClusterIP allocator slows with every address it holds).
    let mix: Vec<String> = runs
        .iter()
        .filter_map(|(n, v)| {
            Some(format!(
                "{n}: {} + {}",
                num(v, &["mix", "cluster_ip"])?,
                num(v, &["mix", "headless"])?
            ))
        })
        .collect();
    let mix = if mix.is_empty() {
        String::new()
    } else {
        format!(
            "; Services with ClusterIPs + headless (5 endpoints each): {}",
            mix.join(", ")
        )
    };
    let ceiling = pick(&["ceiling", "signpost_fraction"]);
    let cd_ceiling = pick(&["ceiling", "coredns_fraction"]);
    targets.push(Target {
        id: "3a",
        what: "DNS queries per second on one core, Signpost / CoreDNS".into(),
        bound: "≥ 4".into(),
        met: all(&qps, |v| v >= 4.0),
        measured: qps,
        note: format!(
            "fraction of the rig's ceiling (a minimal UDP responder on the same core): Signpost {}; CoreDNS {}{mix}",
            show(&ceiling),
            show(&cd_ceiling)
        ),
    });
    let rss = pick(&["ratios_signpost_over_coredns", "rss_loaded"]);
    targets.push(Target {
        id: "3b",
        what: "DNS resident memory under load, Signpost / CoreDNS".into(),
        bound: "≤ 0.3 at 10k".into(),
        met: all(&at(&rss, "10000"), |v| v <= 0.3),
        measured: rss,
        note: String::new(),
    });
    let prog = pick(&["ratios_signpost_over_coredns", "create_to_resolvable_p99"]);
    targets.push(Target {
        id: "3c",
        what: "DNS Service create → resolvable p99, Signpost / CoreDNS".into(),
        bound: "≤ 1".into(),
        met: all(&prog, |v| v <= 1.0),
        measured: prog,
        note: runs
            .iter()
            .map(|(n, v)| {
                let ms = |path: &[&str]| num(v, path).map_or("–".to_owned(), |x| format!("{x:.0}"));
                format!(
                    "{n}: p50 / p99 signpost {} / {} ms, CoreDNS {} / {} ms, the watch event itself (the floor under both) {} / {} ms",
                    ms(&["signpost", "create_to_resolvable_ms", "p50"]),
                    ms(&["signpost", "create_to_resolvable_ms", "p99"]),
                    ms(&["coredns", "create_to_resolvable_ms", "p50"]),
                    ms(&["coredns", "create_to_resolvable_ms", "p99"]),
                    ms(&["create_to_watch_event_ms", "p50"]),
                    ms(&["create_to_watch_event_ms", "p99"]),
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
    });
    plots.push(Plot {
        title: "DNS queries per second (one core)".into(),
        unit: "QPS",
        x: "Services",
        lines: vec![
            ("signpost".into(), series(&["signpost", "qps"])),
            ("coredns".into(), series(&["coredns", "qps"])),
            (
                "ceiling (minimal responder)".into(),
                series(&["ceiling", "qps"]),
            ),
        ],
    });
    plots.push(Plot {
        title: "DNS resident memory under load".into(),
        unit: "KiB",
        x: "Services",
        lines: vec![
            ("signpost".into(), series(&["signpost", "rss_kib_loaded"])),
            ("coredns".into(), series(&["coredns", "rss_kib_loaded"])),
        ],
    });
}

fn endpoints(dir: &Path, targets: &mut Vec<Target>, plots: &mut Vec<Plot>) {
    let runs = scale_runs(dir, "bench-endpoints", Some(1.0));
    if runs.is_empty() {
        targets.push(missing("4", "EndpointSlice controller"));
        return;
    }
    let p99: Vec<(String, f64)> = runs
        .iter()
        .filter_map(|(n, v)| Some((format!("{n}"), num(v, &["ratio_signpost_over_kcm", "p99"])?)))
        .collect();
    let cpu = runs
        .iter()
        .filter_map(|(n, v)| {
            let capped = |who: &str| num(v, &[who, "capped_samples"]).unwrap_or(0.0);
            let mut line = format!(
                "{n} Services: CPU per change {:.2} ms (signpost) vs {:.2} ms (kube-controller-manager)",
                num(v, &["signpost", "cpu_ms_per_change"])?,
                num(v, &["kube-controller-manager", "cpu_ms_per_change"])?
            );
            for who in ["signpost", "kube-controller-manager"] {
                if capped(who) > 0.0 {
                    line.push_str(&format!(
                        ", {who}: {} samples not shown within 60 s (counted as 60 s)",
                        capped(who)
                    ));
                }
            }
            if let Some(settle) = num(v, &["settle_s"]) {
                line.push_str(&format!(", both settled {settle:.0} s after listing every Pod"));
            }
            Some(line)
        })
        .collect::<Vec<_>>()
        .join("; ");
    // The bound is the issue's at-scale point (10k Services, 30k Pods);
    // smaller points are shown beside it.
    targets.push(Target {
        id: "4",
        what: "EndpointSlice controller: Pod ready → endpoint ready p99, Signpost / kube-controller-manager".into(),
        bound: "≤ 0.5 at 10k Services".into(),
        met: all(&at(&p99, "10000"), |v| v <= 0.5),
        measured: p99,
        note: cpu,
    });
    let series = |who: &str| -> Vec<(f64, f64)> {
        runs.iter()
            .filter_map(|(n, v)| Some((*n, num(v, &[who, "p99_ms"])?)))
            .collect()
    };
    plots.push(Plot {
        title: "Pod ready → endpoint ready, p99".into(),
        unit: "ms",
        x: "Services",
        lines: vec![
            ("signpost".into(), series("signpost")),
            (
                "kube-controller-manager".into(),
                series("kube-controller-manager"),
            ),
        ],
    });
}

fn ipvs(dir: &Path, targets: &mut Vec<Target>, plots: &mut Vec<Plot>) {
    let Some(r) = read(dir, "bench-proxy-ipvs.json") else {
        targets.push(missing("5", "IPVS side by side"));
        return;
    };
    let side = num(&r, &["side_by_side", "services"]).unwrap_or(f64::NAN);
    let mut measured = Vec::new();
    for (k, label) in [
        ("ratio_full", "start → all programmed"),
        ("ratio_change", "one change"),
    ] {
        if let Some(v) = num(&r, &["side_by_side", k]) {
            measured.push((format!("{side} Services, {label}"), v));
        }
    }
    let results = r.pointer("/side_by_side/results");
    let mut note = String::new();
    for who in ["signpost", "kube-proxy"] {
        let Some(v) = results.and_then(|m| m.get(who)) else {
            continue;
        };
        let full = num(v, &["full_s"]).unwrap_or(f64::NAN);
        if v.get("capped").is_some() {
            let reached = num(v, &["reached"]).unwrap_or(f64::NAN);
            note.push_str(&format!(
                "{who} capped after {full:.0} s with {reached} of {side} Services in the kernel (the full-sync ratio is a bound: the true {who} time is longer); "
            ));
        } else {
            note.push_str(&format!(
                "{who}: all programmed in {full:.1} s, one change {:.1} ms; ",
                num(v, &["change_ms"]).unwrap_or(f64::NAN)
            ));
        }
    }
    targets.push(Target {
        id: "5",
        what: "IPVS side by side in the kernel VM (qemu TCG), Signpost / kube-proxy".into(),
        bound: "≤ 1 at 10k".into(),
        met: all(&measured, |v| v <= 1.0).filter(|_| side >= 10_000.0),
        measured,
        note: note.trim_end_matches("; ").to_owned(),
    });
    // The core bench inside the VM: one entry per size.
    let core: Vec<(f64, f64)> = r
        .get("signpost_ipvs_core")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| Some((num(v, &["services"])?, num(v, &["full_sync_s"])? * 1000.0)))
                .collect()
        })
        .unwrap_or_default();
    plots.push(Plot {
        title: "IPVS core full sync in the VM".into(),
        unit: "ms",
        x: "Services",
        lines: vec![("signpost".into(), core)],
    });
}

fn model(dir: &Path, targets: &mut Vec<Target>) {
    let runs: Vec<Value> = ["bench-model-default.json", "bench-model-larger.json"]
        .iter()
        .filter_map(|f| read(dir, f))
        .collect();
    if runs.is_empty() {
        targets.push(missing("6", "model checker"));
        return;
    }
    let measured: Vec<(String, f64)> = runs
        .iter()
        .filter_map(|v| Some((v.get("bound")?.as_str()?.to_owned(), num(v, &["seconds"])?)))
        .collect();
    let note = runs
        .iter()
        .filter_map(|v| {
            Some(format!(
                "{}: {} unique states, {:.0} states/s, {}",
                v.get("bound")?.as_str()?,
                num(v, &["unique_states"])?,
                num(v, &["states_per_second"])?,
                if v.get("complete")?.as_bool()? {
                    "exhaustive"
                } else {
                    "stopped at its time cap"
                }
            ))
        })
        .collect::<Vec<_>>()
        .join("; ");
    targets.push(Target {
        id: "6",
        what: "model check wall time (seconds, 2 cores)".into(),
        bound: "< 600 s for the larger bound".into(),
        met: runs
            .iter()
            .find(|v| {
                v.get("bound")
                    .and_then(Value::as_str)
                    .is_some_and(|b| b.starts_with("larger"))
            })
            .map(|v| {
                v.get("complete").and_then(Value::as_bool) == Some(true)
                    && num(v, &["seconds"]).is_some_and(|s| s < 600.0)
            }),
        measured,
        note,
    });
}

fn missing(id: &'static str, what: &str) -> Target {
    Target {
        id,
        what: what.into(),
        bound: String::new(),
        measured: Vec::new(),
        met: None,
        note: "not run".into(),
    }
}

fn show(v: &[(String, f64)]) -> String {
    v.iter()
        .map(|(n, x)| format!("{x:.2} at {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#7f7f7f", "#2ca02c"];

/// A log-log line plot as SVG.
fn svg(plot: &Plot) -> String {
    let (w, h, l, r, t, b) = (600.0, 300.0, 70.0, 250.0, 30.0, 40.0);
    let pts: Vec<(f64, f64)> = plot
        .lines
        .iter()
        .flat_map(|(_, p)| p.iter().copied())
        .filter(|(x, y)| *x > 0.0 && *y > 0.0)
        .collect();
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11"><text x="{l}" y="18" font-size="13" font-weight="bold">{} ({}, log scale)</text>"#,
        esc(&plot.title),
        plot.unit
    );
    if pts.is_empty() {
        s.push_str(r#"<text x="80" y="150">not measured</text></svg>"#);
        return s;
    }
    let decade = |v: f64, up: bool| {
        let e = v.log10();
        10f64.powf(if up { e.ceil() } else { e.floor() })
    };
    let (mut x0, mut x1) = (f64::MAX, f64::MIN);
    let (mut y0, mut y1) = (f64::MAX, f64::MIN);
    for (x, y) in &pts {
        (x0, x1) = (x0.min(*x), x1.max(*x));
        (y0, y1) = (y0.min(*y), y1.max(*y));
    }
    let (x0, x1) = (
        decade(x0, false),
        decade(x1, true).max(decade(x0, false) * 10.0),
    );
    let (y0, y1) = (
        decade(y0, false),
        decade(y1, true).max(decade(y0, false) * 10.0),
    );
    let px = |x: f64| l + (x.log10() - x0.log10()) / (x1.log10() - x0.log10()) * (w - l - r);
    let py = |y: f64| h - b - (y.log10() - y0.log10()) / (y1.log10() - y0.log10()) * (h - t - b);
    let _ = write!(
        s,
        r##"<rect x="{l}" y="{t}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
        w - l - r,
        h - t - b
    );
    let mut d = x0;
    while d <= x1 * 1.0001 {
        let _ = write!(
            s,
            r##"<line x1="{0}" y1="{t}" x2="{0}" y2="{1}" stroke="#eee"/><text x="{0}" y="{2}" text-anchor="middle">{3}</text>"##,
            px(d),
            h - b,
            h - b + 14.0,
            short(d)
        );
        d *= 10.0;
    }
    let mut d = y0;
    while d <= y1 * 1.0001 {
        let _ = write!(
            s,
            r##"<line x1="{l}" y1="{0}" x2="{1}" y2="{0}" stroke="#eee"/><text x="{2}" y="{3}" text-anchor="end">{4}</text>"##,
            py(d),
            w - r,
            l - 4.0,
            py(d) + 4.0,
            short(d)
        );
        d *= 10.0;
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        l + (w - l - r) / 2.0,
        h - 6.0,
        plot.x
    );
    for (i, (name, p)) in plot.lines.iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        let p: Vec<&(f64, f64)> = p.iter().filter(|(x, y)| *x > 0.0 && *y > 0.0).collect();
        let path: Vec<String> = p
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for (x, y) in &p {
            let _ = write!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"><title>{}: {} at {}</title></circle>"#,
                px(*x),
                py(*y),
                esc(name),
                short(*y),
                short(*x)
            );
        }
        let ly = t + 14.0 + 16.0 * i as f64;
        let _ = write!(
            s,
            r#"<line x1="{0}" y1="{1}" x2="{2}" y2="{1}" stroke="{c}" stroke-width="2"/><text x="{3}" y="{4}">{5}</text>"#,
            w - r + 8.0,
            ly,
            w - r + 26.0,
            w - r + 30.0,
            ly + 4.0,
            esc(name)
        );
    }
    s.push_str("</svg>");
    s
}

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{}k", v / 1e3)
    } else if v >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Writes `bench.json` and `bench.html` into `dir`.
pub fn main(args: &[String]) -> Result<(), BoxError> {
    let dir = args
        .iter()
        .position(|a| a == "--dir")
        .and_then(|i| args.get(i + 1))
        .map_or_else(|| "reports".to_owned(), Clone::clone);
    let dir = Path::new(&dir);
    let (mut targets, mut plots) = (Vec::new(), Vec::new());
    proxy_nft(dir, &mut targets, &mut plots);
    dns(dir, &mut targets, &mut plots);
    endpoints(dir, &mut targets, &mut plots);
    ipvs(dir, &mut targets, &mut plots);
    model(dir, &mut targets);

    let mut raw = BTreeMap::new();
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("bench-")
            && name.ends_with(".json")
            && let Some(v) = read(dir, &name)
        {
            raw.insert(name, v);
        }
    }
    let host = json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    });
    let json_targets: Vec<Value> = targets
        .iter()
        .map(|t| {
            json!({
                "id": t.id, "what": t.what, "bound": t.bound, "met": t.met, "note": t.note,
                "measured": t.measured.iter().map(|(k, v)| json!({ "at": k, "ratio": v })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let json_plots: Vec<Value> = plots
        .iter()
        .map(|p| json!({ "title": p.title, "unit": p.unit, "x": p.x, "lines": p.lines.iter().map(|(n, pts)| json!({ "name": n, "points": pts })).collect::<Vec<_>>() }))
        .collect();
    let report = json!({ "host": host, "targets": json_targets, "plots": json_plots, "runs": raw });
    std::fs::write(
        dir.join("bench.json"),
        serde_json::to_string_pretty(&report)?,
    )?;

    let mut html = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Signpost benchmarks</title>\
         <style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}.met{background:#e6f4e6}.unmet{background:#fbe9e9}\
         .plots{display:flex;flex-wrap:wrap;gap:12px}</style></head><body>\
         <h1>Signpost beside its upstream peers</h1>",
    );
    let _ = write!(
        html,
        "<p>One run on this machine ({} CPUs, kernel {}). Ratios are Signpost / upstream; raw figures are in <code>bench.json</code>.</p>\
         <table><tr><th>#</th><th>what</th><th>target</th><th>measured</th><th>met</th><th>notes</th></tr>",
        host["cpus"],
        esc(host["kernel"].as_str().unwrap_or(""))
    );
    for t in &targets {
        let (class, met) = match t.met {
            Some(true) => ("met", "yes"),
            Some(false) => ("unmet", "no"),
            None => ("", "—"),
        };
        let _ = write!(
            html,
            "<tr class=\"{class}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{met}</td><td>{}</td></tr>",
            t.id,
            esc(&t.what),
            esc(&t.bound),
            esc(&show(&t.measured)),
            esc(&t.note)
        );
    }
    html.push_str(
        "</table><h2>How each cost grows with the number of Services</h2><div class=\"plots\">",
    );
    for p in &plots {
        html.push_str(&svg(p));
    }
    html.push_str("</div></body></html>\n");
    std::fs::write(dir.join("bench.html"), html)?;
    for t in &targets {
        println!(
            "target {:>3} {:<70} {:<18} {:<40} {}",
            t.id,
            t.what,
            t.bound,
            show(&t.measured),
            match t.met {
                Some(true) => "met",
                Some(false) => "NOT met",
                None => "not run",
            }
        );
    }
    println!(
        "written: {} and {}",
        dir.join("bench.json").display(),
        dir.join("bench.html").display()
    );
    Ok(())
}
