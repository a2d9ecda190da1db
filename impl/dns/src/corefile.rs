//! A Corefile, read as far as a cluster DNS needs: `signpost dns --corefile`
//! takes the Corefile an operator already runs CoreDNS with (kubeadm's
//! default among them) and maps each plugin to Signpost's own setting.
//! A plugin Signpost does not have, or an option it cannot honour, is an
//! error naming it and its line: a drop-in that silently ignored
//! `namespaces` or `rewrite` would answer differently from what the
//! operator configured.
//!
//! Pure: text in, [`Corefile`] out.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// The Corefile `kubeadm init` writes (kubeadm 1.30 onwards): what an
/// operator replacing CoreDNS already runs; [`parse`] takes it whole.
pub const KUBEADM_DEFAULT: &str = r#".:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    forward . /etc/resolv.conf {
       max_concurrent 1000
    }
    cache 30 {
       disable success cluster.local
       disable denial cluster.local
    }
    loop
    reload
    loadbalance
}
"#;

/// What a Corefile configures, in Signpost's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corefile {
    /// DNS listen addresses (UDP and TCP), from the server block's key and `bind`.
    pub listen: Vec<SocketAddr>,
    /// The cluster zone (the `kubernetes` plugin's first zone).
    pub zone: String,
    /// `pods disabled|insecure|verified`.
    pub pods: Pods,
    /// Cluster records' TTL (`ttl`, CoreDNS's default 5).
    pub ttl: u32,
    /// `kubeconfig PATH [CONTEXT]` inside `kubernetes`.
    pub kubeconfig: Option<PathBuf>,
    /// Where other names go (`forward . TARGET...`).
    pub forward: Forward,
    /// `forward { max_concurrent N }`.
    pub max_concurrent: Option<usize>,
    /// `cache [TTL]`: the longest a forwarded answer is kept.
    pub cache: Option<Duration>,
    /// `health [ADDR] { lameduck D }`: address of `/health`.
    pub health: Option<SocketAddr>,
    /// The lameduck after SIGTERM.
    pub lameduck: Option<Duration>,
    /// `ready [ADDR]`: address of `/ready`.
    pub ready: Option<SocketAddr>,
    /// `prometheus [ADDR]`: address of `/metrics`.
    pub prometheus: Option<SocketAddr>,
    /// `loadbalance`: rotate the order of A/AAAA answers.
    pub loadbalance: bool,
    /// Plugins accepted that change nothing here, with why (logged at start).
    pub notes: Vec<String>,
}

/// Pod records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pods {
    /// No pod records.
    Disabled,
    /// Any `a-b-c-d.ns.pod.zone` answers `a.b.c.d`.
    Insecure,
    /// Only for a Pod with that address in that namespace.
    Verified,
}

/// Upstreams for names outside the cluster's zones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forward {
    /// No `forward` plugin: names outside the cluster are not forwarded.
    None,
    /// The nameservers of this resolv.conf.
    ResolvConf(PathBuf),
    /// These addresses.
    Addrs(Vec<SocketAddr>),
}

/// A Corefile Signpost cannot take, with its line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Corefile line {line}: {message}")]
pub struct Error {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    Open,
    Close,
    Newline,
}

fn tokens(text: &str) -> Vec<(Tok, usize)> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = match raw.find('#') {
            Some(at) => &raw[..at],
            None => raw,
        };
        for word in content.split_whitespace() {
            // `{` and `}` may touch a word: `health{`, `}`.
            let mut rest = word;
            while !rest.is_empty() {
                if let Some(r) = rest.strip_prefix('{') {
                    out.push((Tok::Open, line));
                    rest = r;
                } else if let Some(r) = rest.strip_prefix('}') {
                    out.push((Tok::Close, line));
                    rest = r;
                } else {
                    let end = rest.find(['{', '}']).unwrap_or(rest.len());
                    out.push((Tok::Word(rest[..end].to_owned()), line));
                    rest = &rest[end..];
                }
            }
        }
        out.push((Tok::Newline, line));
    }
    out
}

/// One directive: its name, arguments, and the lines of its block.
#[derive(Debug, Clone)]
struct Directive {
    name: String,
    args: Vec<String>,
    block: Vec<(String, Vec<String>, usize)>,
    line: usize,
}

/// A server block: its keys and directives.
#[derive(Debug, Clone)]
struct Block {
    keys: Vec<String>,
    directives: Vec<Directive>,
    line: usize,
}

fn err(line: usize, message: impl Into<String>) -> Error {
    Error {
        line,
        message: message.into(),
    }
}

fn blocks(text: &str) -> Result<Vec<Block>, Error> {
    let toks = tokens(text);
    let mut i = 0;
    let mut out = Vec::new();
    let skip_newlines = |i: &mut usize| {
        while matches!(toks.get(*i), Some((Tok::Newline, _))) {
            *i += 1;
        }
    };
    loop {
        skip_newlines(&mut i);
        let Some((tok, line)) = toks.get(i) else {
            break;
        };
        let line = *line;
        // Keys up to `{` (they may span lines, comma separated or not).
        let mut keys = Vec::new();
        match tok {
            Tok::Word(_) => {}
            _ => return Err(err(line, "expected a server block's address, like .:53")),
        }
        while let Some((t, l)) = toks.get(i) {
            match t {
                Tok::Word(w) => {
                    keys.extend(w.split(',').filter(|k| !k.is_empty()).map(str::to_owned))
                }
                Tok::Open => break,
                Tok::Newline => {}
                Tok::Close => return Err(err(*l, "unexpected }")),
            }
            i += 1;
        }
        if toks.get(i).is_none() {
            return Err(err(line, "server block without {"));
        }
        i += 1;
        let mut directives = Vec::new();
        loop {
            skip_newlines(&mut i);
            let Some((t, l)) = toks.get(i) else {
                return Err(err(line, "server block not closed with }"));
            };
            let l = *l;
            match t {
                Tok::Close => {
                    i += 1;
                    break;
                }
                Tok::Open => return Err(err(l, "unexpected {")),
                Tok::Newline => unreachable!("skipped"),
                Tok::Word(name) => {
                    let name = name.clone();
                    i += 1;
                    let mut args = Vec::new();
                    while let Some((Tok::Word(w), _)) = toks.get(i) {
                        args.push(w.clone());
                        i += 1;
                    }
                    let mut block = Vec::new();
                    if matches!(toks.get(i), Some((Tok::Open, _))) {
                        i += 1;
                        loop {
                            skip_newlines(&mut i);
                            match toks.get(i) {
                                Some((Tok::Close, _)) => {
                                    i += 1;
                                    break;
                                }
                                Some((Tok::Word(w), bl)) => {
                                    let (w, bl) = (w.clone(), *bl);
                                    i += 1;
                                    let mut a = Vec::new();
                                    while let Some((Tok::Word(x), _)) = toks.get(i) {
                                        a.push(x.clone());
                                        i += 1;
                                    }
                                    if matches!(toks.get(i), Some((Tok::Open, _))) {
                                        return Err(err(
                                            bl,
                                            format!("{name}: nested blocks are not supported"),
                                        ));
                                    }
                                    block.push((w, a, bl));
                                }
                                Some((Tok::Open, bl)) => return Err(err(*bl, "unexpected {")),
                                Some((Tok::Newline, _)) => unreachable!("skipped"),
                                None => {
                                    return Err(err(
                                        l,
                                        format!("{name}: block not closed with }}"),
                                    ));
                                }
                            }
                        }
                    }
                    directives.push(Directive {
                        name,
                        args,
                        block,
                        line: l,
                    });
                }
            }
        }
        out.push(Block {
            keys,
            directives,
            line,
        });
    }
    Ok(out)
}

/// A Go-style duration: `30s`, `5m`, `1h30m`, `500ms`, or bare seconds
/// (`signpost_runtime::duration`, which every flag uses too).
pub fn parse_duration(s: &str) -> Option<Duration> {
    signpost_runtime::duration::parse(s).ok()
}

/// `.:53`, `dns://.:53`, `cluster.local:53`, `:53`, `.`: the port (53 by default).
fn key_port(key: &str, line: usize) -> Result<u16, Error> {
    let k = key.strip_prefix("dns://").unwrap_or(key);
    if k.contains("://") {
        return Err(err(
            line,
            format!("{key}: only plain DNS (dns://) is served"),
        ));
    }
    match k.rsplit_once(':') {
        Some((_, port)) => port
            .parse()
            .map_err(|_| err(line, format!("{key}: bad port"))),
        None => Ok(53),
    }
}

/// `:9153`, `0.0.0.0:8080`, `[::]:8181`, `localhost:8080`.
fn http_addr(arg: Option<&String>, default_port: u16, line: usize) -> Result<SocketAddr, Error> {
    let Some(a) = arg else {
        return Ok(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            default_port,
        ));
    };
    if let Ok(sa) = a.parse::<SocketAddr>() {
        return Ok(sa);
    }
    let (host, port) = a
        .rsplit_once(':')
        .ok_or_else(|| err(line, format!("{a}: expected [HOST]:PORT")))?;
    let port: u16 = port
        .parse()
        .map_err(|_| err(line, format!("{a}: bad port")))?;
    let ip = match host {
        "" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        h => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| err(line, format!("{a}: bad address")))?,
    };
    Ok(SocketAddr::new(ip, port))
}

fn one_duration(
    d: &Directive,
    what: &str,
    args: &[String],
    line: usize,
) -> Result<Duration, Error> {
    match args {
        [v] => parse_duration(v)
            .ok_or_else(|| err(line, format!("{}: {what} {v:?} is not a duration", d.name))),
        _ => Err(err(line, format!("{}: {what} takes one duration", d.name))),
    }
}

/// Reads a Corefile. It must hold one server block for the cluster (a
/// root `.` block, or one keyed by the cluster zone), with the
/// `kubernetes` plugin.
pub fn parse(text: &str) -> Result<Corefile, Error> {
    let blocks = blocks(text)?;
    let [block] = blocks.as_slice() else {
        return Err(err(
            blocks.get(1).map_or(1, |b| b.line),
            format!(
                "{} server blocks; Signpost serves one (the cluster's, usually .:53)",
                blocks.len()
            ),
        ));
    };
    let mut ports: Vec<u16> = Vec::new();
    for k in &block.keys {
        let p = key_port(k, block.line)?;
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    let mut cf = Corefile {
        listen: Vec::new(),
        zone: String::new(),
        pods: Pods::Disabled,
        ttl: 5,
        kubeconfig: None,
        forward: Forward::None,
        max_concurrent: None,
        cache: None,
        health: None,
        lameduck: None,
        ready: None,
        prometheus: None,
        loadbalance: false,
        notes: Vec::new(),
    };
    let mut binds: Vec<IpAddr> = Vec::new();
    let mut saw_kubernetes = false;
    for d in &block.directives {
        let no_block = |d: &Directive| {
            if let Some((w, _, l)) = d.block.first() {
                Err(err(*l, format!("{}: option {w} is not supported", d.name)))
            } else {
                Ok(())
            }
        };
        match d.name.as_str() {
            "kubernetes" => {
                saw_kubernetes = true;
                let Some(zone) = d.args.first() else {
                    return Err(err(d.line, "kubernetes: no zone"));
                };
                cf.zone = zone.trim_end_matches('.').to_ascii_lowercase();
                for z in &d.args[1..] {
                    let z = z.trim_end_matches('.');
                    if !(z.ends_with("in-addr.arpa") || z.ends_with("ip6.arpa")) {
                        return Err(err(
                            d.line,
                            format!(
                                "kubernetes: zone {z}: Signpost serves one cluster zone and the reverse zones"
                            ),
                        ));
                    }
                }
                for (opt, args, line) in &d.block {
                    match opt.as_str() {
                        "pods" => {
                            cf.pods = match args.as_slice() {
                                [m] if m == "disabled" => Pods::Disabled,
                                [m] if m == "insecure" => Pods::Insecure,
                                [m] if m == "verified" => Pods::Verified,
                                _ => return Err(err(*line, "kubernetes: pods disabled|insecure|verified")),
                            }
                        }
                        "ttl" => {
                            cf.ttl = match args.as_slice() {
                                [t] => t.parse().ok().filter(|t| *t <= 3600).ok_or_else(|| {
                                    err(*line, format!("kubernetes: ttl {t}: 0 to 3600 seconds"))
                                })?,
                                _ => return Err(err(*line, "kubernetes: ttl takes one number")),
                            }
                        }
                        "kubeconfig" => match args.as_slice() {
                            [p] => cf.kubeconfig = Some(PathBuf::from(p)),
                            _ => {
                                return Err(err(*line, "kubernetes: kubeconfig PATH (a context is not supported)"));
                            }
                        },
                        // Names not found fall through to the next plugin,
                        // which here is `forward` for names outside the
                        // cluster zone (inside it, NXDOMAIN is the answer).
                        "fallthrough" => cf.notes.push(format!(
                            "line {line}: kubernetes fallthrough: names outside {} are forwarded; inside it the answer is the cluster's",
                            cf.zone
                        )),
                        other => {
                            return Err(err(*line, format!("kubernetes: option {other} is not supported")));
                        }
                    }
                }
            }
            "forward" => {
                match d.args.first().map(String::as_str) {
                    Some(".") => {}
                    Some(from) => {
                        return Err(err(
                            d.line,
                            format!(
                                "forward {from}: only `forward .` (everything outside the cluster) is supported"
                            ),
                        ));
                    }
                    None => return Err(err(d.line, "forward: FROM and TO are required")),
                }
                let to = &d.args[1..];
                if to.is_empty() {
                    return Err(err(d.line, "forward: no upstream"));
                }
                if let [path] = to
                    && path.starts_with('/')
                {
                    cf.forward = Forward::ResolvConf(PathBuf::from(path));
                } else {
                    let mut addrs = Vec::new();
                    for t in to {
                        let t = t.strip_prefix("dns://").unwrap_or(t);
                        let a = t
                            .parse::<SocketAddr>()
                            .or_else(|_| t.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                            .map_err(|_| {
                                err(
                                    d.line,
                                    format!("forward: {t}: an IP[:port] or one resolv.conf path"),
                                )
                            })?;
                        addrs.push(a);
                    }
                    cf.forward = Forward::Addrs(addrs);
                }
                for (opt, args, line) in &d.block {
                    match opt.as_str() {
                        "max_concurrent" => {
                            cf.max_concurrent = match args.as_slice() {
                                [n] => {
                                    Some(n.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                                        err(
                                            *line,
                                            "forward: max_concurrent takes a positive number",
                                        )
                                    })?)
                                }
                                _ => {
                                    return Err(err(
                                        *line,
                                        "forward: max_concurrent takes a number",
                                    ));
                                }
                            }
                        }
                        // How upstreams are chosen and checked: Signpost
                        // asks them in turn and quarantines a looping one.
                        "policy" | "health_check" | "max_fails" | "expire" => {
                            cf.notes.push(format!(
                                "line {line}: forward {opt}: Signpost's own upstream choice applies"
                            ))
                        }
                        other => {
                            return Err(err(
                                *line,
                                format!("forward: option {other} is not supported"),
                            ));
                        }
                    }
                }
            }
            "cache" => {
                cf.cache = Some(match d.args.as_slice() {
                    [] => Duration::from_secs(3600),
                    [t] => parse_duration(t)
                        .ok_or_else(|| err(d.line, format!("cache {t}: a TTL in seconds")))?,
                    _ => {
                        return Err(err(
                            d.line,
                            "cache [TTL] [ZONES...]: zones are not supported",
                        ));
                    }
                });
                for (opt, args, line) in &d.block {
                    // kubeadm's: do not cache the cluster zone (Signpost's
                    // cluster answers are never cached: they come from the index).
                    let cluster_only = args.len() == 2
                        && (args[0] == "success" || args[0] == "denial")
                        && (cf.zone.is_empty() || args[1].trim_end_matches('.') == cf.zone);
                    if opt == "disable" && cluster_only {
                        continue;
                    }
                    return Err(err(
                        *line,
                        format!("cache: option {opt} {} is not supported", args.join(" ")),
                    ));
                }
            }
            "health" => {
                cf.health = Some(http_addr(d.args.first(), 8080, d.line)?);
                for (opt, args, line) in &d.block {
                    match opt.as_str() {
                        "lameduck" => cf.lameduck = Some(one_duration(d, "lameduck", args, *line)?),
                        other => {
                            return Err(err(
                                *line,
                                format!("health: option {other} is not supported"),
                            ));
                        }
                    }
                }
            }
            "ready" => {
                no_block(d)?;
                cf.ready = Some(http_addr(d.args.first(), 8181, d.line)?);
            }
            "prometheus" => {
                no_block(d)?;
                cf.prometheus = Some(http_addr(d.args.first(), 9153, d.line)?);
            }
            "bind" => {
                no_block(d)?;
                for a in &d.args {
                    binds.push(a.parse().map_err(|_| {
                        err(
                            d.line,
                            format!("bind {a}: an address (interface names are not supported)"),
                        )
                    })?);
                }
            }
            "loadbalance" => {
                match d.args.as_slice() {
                    [] => {}
                    [p] if p == "round_robin" => {}
                    _ => return Err(err(d.line, "loadbalance: only round_robin")),
                }
                no_block(d)?;
                cf.loadbalance = true;
            }
            "errors" | "log" => {
                cf.notes.push(format!(
                    "line {}: {}: Signpost logs errors (and with -v queries) as it always does",
                    d.line, d.name
                ));
            }
            "loop" => {
                no_block(d)?;
                cf.notes.push(format!(
                    "line {}: loop: Signpost always probes its upstreams for loops",
                    d.line
                ));
            }
            "reload" => {
                cf.notes.push(format!(
                    "line {}: reload: a changed Corefile takes effect on restart (Signpost does not reload it)",
                    d.line
                ));
            }
            other => {
                return Err(err(
                    d.line,
                    format!(
                        "plugin {other} is not supported (supported: kubernetes, forward, cache, health, ready, prometheus, bind, loadbalance, errors, log, loop, reload)"
                    ),
                ));
            }
        }
    }
    if !saw_kubernetes {
        return Err(err(
            block.line,
            "no kubernetes plugin: nothing for Signpost to serve",
        ));
    }
    if binds.is_empty() {
        binds.push(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }
    for p in ports {
        for ip in &binds {
            cf.listen.push(SocketAddr::new(*ip, p));
        }
    }
    Ok(cf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubeadm_corefile_is_taken_whole() {
        let cf = parse(KUBEADM_DEFAULT).unwrap();
        let any = |p| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), p);
        assert_eq!(cf.listen, vec![any(53)]);
        assert_eq!(cf.zone, "cluster.local");
        assert_eq!(cf.pods, Pods::Insecure);
        assert_eq!(cf.ttl, 30);
        assert_eq!(cf.forward, Forward::ResolvConf("/etc/resolv.conf".into()));
        assert_eq!(cf.max_concurrent, Some(1000));
        assert_eq!(cf.cache, Some(Duration::from_secs(30)));
        assert_eq!(cf.health, Some(any(8080)));
        assert_eq!(cf.lameduck, Some(Duration::from_secs(5)));
        assert_eq!(cf.ready, Some(any(8181)));
        assert_eq!(cf.prometheus, Some(any(9153)));
        assert!(cf.loadbalance);
        assert_eq!(cf.notes.len(), 4, "{:?}", cf.notes);
    }

    #[test]
    fn what_signpost_cannot_honour_is_an_error_with_its_line() {
        let e = parse(&KUBEADM_DEFAULT.replace("    loop\n", "    rewrite name foo bar\n"))
            .unwrap_err();
        assert_eq!(e.line, 20);
        assert!(e.message.contains("rewrite"), "{e}");
        let e = parse(&KUBEADM_DEFAULT.replace("ttl 30", "namespaces default")).unwrap_err();
        assert!(e.message.contains("namespaces"), "{e}");
        let e = parse(".:53 {\n forward . 8.8.8.8\n}\n").unwrap_err();
        assert!(e.message.contains("kubernetes"), "{e}");
        assert!(
            parse(".:53 {\n kubernetes cluster.local\n").is_err(),
            "unclosed"
        );
        assert!(
            parse(&format!(
                "{KUBEADM_DEFAULT}\nexample.org {{\n forward . 1.1.1.1\n}}\n"
            ))
            .is_err()
        );
        assert!(parse(".:53 {\n kubernetes cluster.local {\n pods sometimes\n }\n}\n").is_err());
        assert!(parse("garbage { { }").is_err());
    }

    #[test]
    fn keys_bind_and_addresses() {
        let cf = parse(
            "dns://.:5353 {\n  bind 127.0.0.1 ::1\n  kubernetes k8s.example. {\n    kubeconfig /etc/kc\n  }\n  forward . 10.0.0.1 10.0.0.2:5300\n  prometheus 127.0.0.1:9999 # ours\n}\n",
        )
        .unwrap();
        assert_eq!(
            cf.listen,
            vec![
                "127.0.0.1:5353".parse().unwrap(),
                "[::1]:5353".parse().unwrap()
            ]
        );
        assert_eq!(cf.zone, "k8s.example");
        assert_eq!(cf.kubeconfig, Some(PathBuf::from("/etc/kc")));
        assert_eq!(
            cf.forward,
            Forward::Addrs(vec![
                "10.0.0.1:53".parse().unwrap(),
                "10.0.0.2:5300".parse().unwrap()
            ])
        );
        assert_eq!(cf.prometheus, Some("127.0.0.1:9999".parse().unwrap()));
        assert_eq!(cf.ttl, 5, "CoreDNS's default");
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("s"), None);
    }
}
