//! A packet tracer over Signpost's own nftables transactions: it replays the
//! commands into a small table model and follows a packet through the rule
//! shapes Signpost generates. Any other shape is an error, so a generator
//! change that the tracer does not understand fails the tests instead of
//! being silently misread. Used by fast property tests against the oracle.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use serde_json::{Value, json};
use signpost_model::cluster::Protocol;

use super::TABLE;

/// Where a packet may go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Trace {
    /// Possible DNAT targets, each with whether it is masqueraded.
    pub dnat: BTreeSet<(SocketAddr, bool)>,
    /// The packet is rejected.
    pub rejected: bool,
}

impl Trace {
    /// The DNAT targets without the masquerade flag.
    pub fn backends(&self) -> BTreeSet<SocketAddr> {
        self.dnat.iter().map(|(a, _)| *a).collect()
    }
}

/// The replayed table.
#[derive(Debug, Default, Clone)]
pub struct Tracer {
    exists: bool,
    chains: BTreeMap<String, Vec<Vec<Value>>>,
    maps: BTreeMap<String, Vec<(Value, Value)>>,
    sets: BTreeMap<String, BTreeSet<String>>,
}

fn name(v: &Value) -> Result<String, String> {
    v.get("name")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("no name in {v}"))
}

impl Tracer {
    /// Replays one transaction.
    pub fn apply(&mut self, tx: &Value) -> Result<(), String> {
        let cmds = tx
            .get("nftables")
            .and_then(Value::as_array)
            .ok_or("not an nftables transaction")?;
        for cmd in cmds {
            let (verb, body) = cmd
                .as_object()
                .and_then(|o| o.iter().next())
                .ok_or_else(|| format!("bad command {cmd}"))?;
            let (kind, obj) = body
                .as_object()
                .and_then(|o| o.iter().next())
                .ok_or_else(|| format!("bad object {body}"))?;
            if obj
                .get("table")
                .and_then(Value::as_str)
                .is_some_and(|t| t != TABLE)
                || obj
                    .get("family")
                    .and_then(Value::as_str)
                    .is_some_and(|f| f != "inet")
            {
                return Err(format!("foreign table in {cmd}"));
            }
            match (verb.as_str(), kind.as_str()) {
                ("add", "table") => self.exists = true,
                ("delete", "table") => *self = Tracer::default(),
                ("add", "chain") => {
                    self.chains.entry(name(obj)?).or_default();
                }
                ("flush", "chain") => self
                    .chains
                    .get_mut(&name(obj)?)
                    .ok_or("flush of a missing chain")?
                    .clear(),
                ("delete", "chain") => {
                    let n = name(obj)?;
                    if self.chains.get(&n).is_some_and(|r| !r.is_empty()) {
                        return Err(format!("delete of non-empty chain {n}"));
                    }
                    self.chains
                        .remove(&n)
                        .ok_or_else(|| format!("delete of missing chain {n}"))?;
                }
                ("add", "rule") => {
                    let chain = obj
                        .get("chain")
                        .and_then(Value::as_str)
                        .ok_or("rule without chain")?;
                    let expr = obj
                        .get("expr")
                        .and_then(Value::as_array)
                        .ok_or("rule without expr")?
                        .clone();
                    self.chains
                        .get_mut(chain)
                        .ok_or_else(|| format!("rule in missing chain {chain}"))?
                        .push(expr);
                }
                ("add", "map") => {
                    self.maps.entry(name(obj)?).or_default();
                }
                ("add", "set") => {
                    self.sets.entry(name(obj)?).or_default();
                }
                ("delete", "set") => {
                    self.sets
                        .remove(&name(obj)?)
                        .ok_or("delete of a missing set")?;
                }
                ("delete", "map") => {
                    let n = name(obj)?;
                    let used = self.chains.values().flatten().flatten().any(|e| {
                        e.pointer("/dnat/addr/map/data").and_then(Value::as_str)
                            == Some(format!("@{n}").as_str())
                    });
                    if used {
                        return Err(format!("delete of map {n} a rule still uses"));
                    }
                    self.maps
                        .remove(&n)
                        .ok_or_else(|| format!("delete of missing map {n}"))?;
                }
                ("add" | "delete", "element") => {
                    let n = name(obj)?;
                    let elems = obj
                        .get("elem")
                        .and_then(Value::as_array)
                        .ok_or("element without elem")?;
                    for e in elems {
                        if let Some(m) = self.maps.get_mut(&n) {
                            let pair = e.as_array().filter(|a| a.len() == 2);
                            match (verb.as_str(), pair) {
                                ("add", Some(p)) => {
                                    if m.iter().any(|(k, _)| *k == p[0]) {
                                        return Err(format!("add of existing map element {e}"));
                                    }
                                    m.push((p[0].clone(), p[1].clone()));
                                }
                                ("delete", _) => {
                                    let before = m.len();
                                    m.retain(|(k, _)| k != e);
                                    if m.len() == before {
                                        return Err(format!("delete of missing map element {e}"));
                                    }
                                }
                                _ => return Err(format!("bad map element {e}")),
                            }
                        } else if let Some(s) = self.sets.get_mut(&n) {
                            let text = e.get("concat").unwrap_or(e).to_string();
                            let ok = if verb == "add" {
                                s.insert(text)
                            } else {
                                s.remove(&text)
                            };
                            if !ok {
                                return Err(format!(
                                    "{verb} of element {e} in {n} changed nothing"
                                ));
                            }
                        } else {
                            return Err(format!("element of missing set {n}"));
                        }
                    }
                }
                other => {
                    return Err(format!(
                        "command shape {other:?} is not one Signpost generates"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Follows a new packet from `src` to `dst:port`.
    pub fn trace(
        &self,
        src: IpAddr,
        dst: IpAddr,
        protocol: Protocol,
        port: u16,
    ) -> Result<Trace, String> {
        if !self.exists {
            return Ok(Trace::default());
        }
        let pkt = Packet {
            src,
            dst,
            proto: protocol.as_lower(),
            port,
        };
        let mut out = Trace::default();
        for path in self.run("nat-prerouting", &pkt, false, 0)? {
            if let Some(d) = path.dnat {
                let masq = self.masqueraded(src, d.ip(), path.masq)?;
                out.dnat.insert((d, masq));
            }
        }
        if out.dnat.is_empty() {
            // Not translated: the filter chains see the ClusterIP.
            out.rejected = self
                .run("filter-input", &pkt, false, 0)?
                .iter()
                .any(|p| p.rejected);
        }
        Ok(out)
    }

    /// Whether `nat-postrouting` masquerades a translated packet from
    /// `src` to `to` (`marked`: it carries the masquerade mark). Its rules
    /// end in `masquerade` and match the mark, `ct status dnat` (true:
    /// the packet was translated) or `saddr . daddr` in a set.
    fn masqueraded(&self, src: IpAddr, to: IpAddr, marked: bool) -> Result<bool, String> {
        let rules = self
            .chains
            .get("nat-postrouting")
            .ok_or("missing chain nat-postrouting")?;
        'rules: for expr in rules {
            let Some((last, conds)) = expr.split_last() else {
                continue;
            };
            if last.get("masquerade").is_none() {
                return Err(format!("postrouting rule {expr:?} does not masquerade"));
            }
            for c in conds {
                let m = c
                    .get("match")
                    .ok_or_else(|| format!("postrouting statement {c} is not a match"))?;
                let (left, right) = (&m["left"], &m["right"]);
                let hit = if left.pointer("/ct/key").and_then(Value::as_str) == Some("status") {
                    right == "dnat"
                } else if left.get("&").is_some() {
                    marked && right.as_u64() == Some(super::MASQ_MARK)
                } else if let Some(set) = right.as_str().and_then(|s| s.strip_prefix('@')) {
                    let fam = if src.is_ipv6() { "ip6" } else { "ip" };
                    let pair = json!({ "concat": [
                        { "payload": { "protocol": fam, "field": "saddr" } },
                        { "payload": { "protocol": fam, "field": "daddr" } },
                    ] });
                    if left.get("concat").is_none() {
                        return Err(format!(
                            "postrouting match {m} is not one Signpost generates"
                        ));
                    }
                    *left == pair
                        && self
                            .sets
                            .get(set)
                            .ok_or_else(|| format!("missing set {set}"))?
                            .contains(&json!([src.to_string(), to.to_string()]).to_string())
                } else {
                    return Err(format!(
                        "postrouting match {m} is not one Signpost generates"
                    ));
                };
                if !hit {
                    continue 'rules;
                }
            }
            return Ok(true);
        }
        Ok(false)
    }

    fn run(
        &self,
        chain: &str,
        pkt: &Packet,
        masq: bool,
        depth: usize,
    ) -> Result<Vec<Path>, String> {
        if depth > 8 {
            return Err("chain recursion".into());
        }
        let rules = self
            .chains
            .get(chain)
            .ok_or_else(|| format!("missing chain {chain}"))?;
        let mut masq = masq;
        // Paths taken by random rules passed on the way (`numgen random mod
        // k == 0`): the packet may take each, or go on to the next rule.
        let mut taken = Vec::new();
        for expr in rules {
            if let Some(rest) = random_choice(expr)? {
                match self.rule(rest, pkt, &mut masq.clone(), depth)? {
                    Step::Done(paths) => taken.extend(paths),
                    Step::Next => return Err("a random rule without a verdict".into()),
                }
                continue;
            }
            match self.rule(expr, pkt, &mut masq, depth)? {
                Step::Next => {}
                Step::Done(paths) => {
                    taken.extend(paths);
                    return Ok(taken);
                }
            }
        }
        taken.push(Path {
            dnat: None,
            masq,
            rejected: false,
            fell_through: true,
        });
        Ok(taken)
    }

    fn verdict(&self, v: &Value, pkt: &Packet, masq: bool, depth: usize) -> Result<Step, String> {
        if let Some(t) = v.pointer("/goto/target").and_then(Value::as_str) {
            return Ok(Step::Done(self.run(t, pkt, masq, depth + 1)?));
        }
        if let Some(t) = v.pointer("/jump/target").and_then(Value::as_str) {
            let paths = self.run(t, pkt, masq, depth + 1)?;
            if paths.iter().all(|p| p.fell_through) {
                return Ok(Step::Next);
            }
            return Ok(Step::Done(paths));
        }
        Err(format!("verdict {v} is not one Signpost generates"))
    }

    fn rule(
        &self,
        expr: &[Value],
        pkt: &Packet,
        masq: &mut bool,
        depth: usize,
    ) -> Result<Step, String> {
        let mut local_masq = *masq;
        for (i, e) in expr.iter().enumerate() {
            if let Some(m) = e.get("match") {
                if !self.matches(m, pkt)? {
                    return Ok(Step::Next);
                }
            } else if e.get("mangle").is_some() {
                local_masq = true;
                *masq = true;
            } else if e.get("set").is_some() {
                // Affinity bookkeeping; does not change where the packet goes.
            } else if let Some(d) = e.get("dnat")
                && let Some(m) = d.pointer("/addr/map")
            {
                let picks = self.picks(m, pkt)?;
                if picks.is_empty() {
                    return Ok(Step::Next);
                }
                return Ok(Step::Done(
                    picks
                        .into_iter()
                        .map(|to| Path {
                            dnat: Some(to),
                            masq: local_masq,
                            rejected: false,
                            fell_through: false,
                        })
                        .collect(),
                ));
            } else if let Some(d) = e.get("dnat") {
                let addr: IpAddr = d
                    .get("addr")
                    .and_then(Value::as_str)
                    .and_then(|a| a.parse().ok())
                    .ok_or("bad dnat addr")?;
                let port = d
                    .get("port")
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok())
                    .ok_or("bad dnat port")?;
                return Ok(Step::Done(vec![Path {
                    dnat: Some(SocketAddr::new(addr, port)),
                    masq: local_masq,
                    rejected: false,
                    fell_through: false,
                }]));
            } else if e.get("reject").is_some() {
                return Ok(Step::Done(vec![Path {
                    dnat: None,
                    masq: local_masq,
                    rejected: true,
                    fell_through: false,
                }]));
            } else if e.get("masquerade").is_some() {
            } else if let Some(vm) = e.get("vmap") {
                return self.vmap(vm, pkt, local_masq, depth);
            } else if e.get("goto").is_some() || e.get("jump").is_some() {
                if i + 1 != expr.len() {
                    return Err("verdict before the end of a rule".into());
                }
                return self.verdict(e, pkt, local_masq, depth);
            } else {
                return Err(format!("statement {e} is not one Signpost generates"));
            }
        }
        Ok(Step::Next)
    }

    fn field(&self, v: &Value, pkt: &Packet) -> Result<Value, String> {
        if let Some(p) = v.get("payload") {
            let proto = p
                .get("protocol")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let field = p.get("field").and_then(Value::as_str).unwrap_or_default();
            let fam_ok = match proto {
                "ip" => pkt.dst.is_ipv4(),
                "ip6" => pkt.dst.is_ipv6(),
                _ => true,
            };
            return Ok(match (fam_ok, field) {
                (false, _) => Value::Null,
                (true, "saddr") => Value::String(pkt.src.to_string()),
                (true, "daddr") => Value::String(pkt.dst.to_string()),
                (true, "dport") => Value::from(pkt.port),
                _ => return Err(format!("payload {p} is not one Signpost generates")),
            });
        }
        if let Some(m) = v.pointer("/meta/key").and_then(Value::as_str) {
            return Ok(match m {
                "l4proto" => Value::String(pkt.proto.to_owned()),
                "nfproto" => {
                    Value::String(if pkt.dst.is_ipv4() { "ipv4" } else { "ipv6" }.to_owned())
                }
                "mark" => Value::from(0),
                other => return Err(format!("meta {other} is not one Signpost generates")),
            });
        }
        if let Some(parts) = v.get("concat").and_then(Value::as_array) {
            return parts
                .iter()
                .map(|p| self.field(p, pkt))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array);
        }
        Err(format!("expression {v} is not one Signpost generates"))
    }

    fn matches(&self, m: &Value, pkt: &Packet) -> Result<bool, String> {
        let left = self.field(m.get("left").ok_or("match without left")?, pkt)?;
        if left.is_null() {
            return Ok(false);
        }
        let right = m.get("right").ok_or("match without right")?;
        let negated = match m.get("op").and_then(Value::as_str) {
            Some("==") | None => false,
            Some("!=") => true,
            Some(op) => return Err(format!("match op {op} is not one Signpost generates")),
        };
        if let Some(set) = right.as_str().and_then(|s| s.strip_prefix('@')) {
            if set.starts_with('a') {
                // An affinity set: empty for a new client.
                return Ok(negated);
            }
            let s = self
                .sets
                .get(set)
                .ok_or_else(|| format!("missing set {set}"))?;
            let member = s.contains(&left.to_string()) || in_a_range(s, &left);
            return Ok(member != negated);
        }
        Ok((&left == right) != negated)
    }

    /// The backends of `daddr . dport . numgen random mod n map @m` for
    /// the packet: the elements under its address and port, which must have
    /// each index below `n` exactly once (else some draws find nothing);
    /// none when the map has nothing under them (the rule does not match).
    fn picks(&self, m: &Value, pkt: &Packet) -> Result<Vec<SocketAddr>, String> {
        let parts = m
            .pointer("/key/concat")
            .and_then(Value::as_array)
            .filter(|p| p.len() == 3)
            .ok_or_else(|| format!("dnat map {m} is not one Signpost generates"))?;
        let n = parts[2]
            .pointer("/numgen/mod")
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("dnat map {m} is not one Signpost generates"))?;
        let (dst, port) = (self.field(&parts[0], pkt)?, self.field(&parts[1], pkt)?);
        if dst.is_null() {
            return Err(format!("dnat map {m} of another family"));
        }
        if parts[1]
            .pointer("/payload/protocol")
            .and_then(Value::as_str)
            != Some(pkt.proto)
        {
            return Err(format!(
                "dnat map {m} for another protocol than {}",
                pkt.proto
            ));
        }
        let name = m
            .get("data")
            .and_then(Value::as_str)
            .and_then(|s| s.strip_prefix('@'))
            .ok_or("dnat map data is not a map reference")?;
        let mut picks = Vec::new();
        for (k, to) in self
            .maps
            .get(name)
            .ok_or_else(|| format!("missing map {name}"))?
        {
            let key = k
                .get("concat")
                .and_then(Value::as_array)
                .filter(|k| k.len() == 3)
                .ok_or_else(|| format!("backends map key {k} is not address . port . index"))?;
            if key[0] != dst || key[1] != port {
                continue;
            }
            let index = key[2]
                .as_u64()
                .ok_or_else(|| format!("backends map key {k} has no index"))?;
            let parts = to
                .get("concat")
                .and_then(Value::as_array)
                .ok_or_else(|| format!("backend {to} is not address . port"))?;
            let ip: IpAddr = parts
                .first()
                .and_then(Value::as_str)
                .and_then(|a| a.parse().ok())
                .ok_or("bad backend address")?;
            let port = parts
                .get(1)
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
                .ok_or("bad backend port")?;
            picks.push((index, SocketAddr::new(ip, port)));
        }
        picks.sort_unstable();
        if picks.is_empty() {
            // The lookup fails: the rule does not match.
            return Ok(Vec::new());
        }
        if picks.iter().map(|(i, _)| *i).ne(0..n) {
            return Err(format!(
                "map {name} under {dst} . {port}: indices {:?}, not each of 0..{n} once",
                picks.iter().map(|(i, _)| *i).collect::<Vec<_>>()
            ));
        }
        Ok(picks.into_iter().map(|(_, to)| to).collect())
    }

    fn vmap(&self, vm: &Value, pkt: &Packet, masq: bool, depth: usize) -> Result<Step, String> {
        let key = vm.get("key").ok_or("vmap without key")?;
        let data = vm.get("data").ok_or("vmap without data")?;
        if let Some(numgen) = key.get("numgen") {
            let n = numgen
                .get("mod")
                .and_then(Value::as_u64)
                .ok_or("numgen without mod")?;
            let choices = data
                .get("set")
                .and_then(Value::as_array)
                .ok_or("numgen vmap without set")?;
            if choices.len() as u64 != n {
                return Err(format!("numgen mod {n} over {} choices", choices.len()));
            }
            let mut paths = Vec::new();
            for c in choices {
                match self.verdict(&c[1], pkt, masq, depth)? {
                    Step::Done(p) => paths.extend(p),
                    Step::Next => return Err("numgen choice fell through".into()),
                }
            }
            return Ok(Step::Done(paths));
        }
        let left = self.field(key, pkt)?;
        if left
            .as_array()
            .is_some_and(|a| a.iter().any(Value::is_null))
        {
            return Ok(Step::Next);
        }
        let map = data
            .as_str()
            .and_then(|s| s.strip_prefix('@'))
            .ok_or("vmap data is not a map reference")?;
        let elems = self
            .maps
            .get(map)
            .ok_or_else(|| format!("missing map {map}"))?;
        for (k, verdict) in elems {
            let k = k.get("concat").unwrap_or(k);
            if *k == left {
                return self.verdict(verdict, pkt, masq, depth);
            }
        }
        Ok(Step::Next)
    }
}

/// The rest of a rule that starts with `numgen random mod k == 0` (k ≥ 2:
/// taken or not, at random), or `None` for any other rule.
fn random_choice(expr: &[Value]) -> Result<Option<&[Value]>, String> {
    let Some(first) = expr.first() else {
        return Ok(None);
    };
    let Some(ng) = first.pointer("/match/left/numgen") else {
        return Ok(None);
    };
    let m = ng.get("mod").and_then(Value::as_u64).unwrap_or(0);
    if ng.get("mode").and_then(Value::as_str) != Some("random")
        || m < 2
        || first.pointer("/match/op").and_then(Value::as_str) != Some("==")
        || first.pointer("/match/right").and_then(Value::as_u64) != Some(0)
    {
        return Err(format!(
            "numgen match {first} is not one Signpost generates"
        ));
    }
    Ok(Some(&expr[1..]))
}

/// Whether `addr` (a JSON string) lies in a range element of `set`.
fn in_a_range(set: &BTreeSet<String>, addr: &Value) -> bool {
    let Some(addr) = addr.as_str().and_then(|a| a.parse::<IpAddr>().ok()) else {
        return false;
    };
    set.iter().any(|e| {
        let Ok(v) = serde_json::from_str::<Value>(e) else {
            return false;
        };
        let net = v.get("prefix").and_then(|p| {
            let a: IpAddr = p.get("addr")?.as_str()?.parse().ok()?;
            let len = u8::try_from(p.get("len")?.as_u64()?).ok()?;
            ipnet::IpNet::new(a, len).ok()
        });
        net.is_some_and(|n| n.contains(&addr))
    })
}

struct Packet {
    src: IpAddr,
    dst: IpAddr,
    proto: &'static str,
    port: u16,
}

struct Path {
    dnat: Option<SocketAddr>,
    masq: bool,
    rejected: bool,
    fell_through: bool,
}

enum Step {
    Next,
    Done(Vec<Path>),
}
