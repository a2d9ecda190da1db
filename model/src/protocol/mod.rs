//! A stateright model of registration and discovery: the API server (store,
//! resourceVersions, ClusterIP allocator, per-watcher queues), the
//! EndpointSlice controller, the cluster DNS, one proxy per node, a client
//! Pod and a user with a bounded budget of changes; faults are crashes and
//! dropped watches. Build it with `Cfg { .. }.into_model()`.

mod actors;
pub mod catalog;
pub mod properties;
mod state;

use std::net::IpAddr;

use stateright::{Model, Property};

pub use properties::{PROPERTIES, is_quiescent};
pub use state::{
    Api, DnsServer, EpsController, Ev, History, ProxyNode, State, Used, Watch, WatchStatus, Watcher,
};

/// A deliberately broken component, to show the checker catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Bug {
    /// Everything as shipped.
    #[default]
    None,
    /// The DNS ignores Service DELETE events.
    DnsIgnoresDeletes,
    /// A restarted proxy does not relist: it starts from an empty cache.
    ProxyNoRelistOnRestart,
}

/// The bounds and switches of one model.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cfg {
    /// Nodes, each with a proxy (1..=2).
    pub nodes: u8,
    /// Catalog Pods in play (1..=4), all present and ready at the start.
    pub pods: u8,
    /// Catalog Services live at the start (the rest can be created).
    pub initial_services: u8,
    /// Size of the ClusterIP pool.
    pub service_ips: u8,
    /// User changes (Service create/delete, Pod create/delete/ready/terminating).
    pub changes: u8,
    /// Component crashes (each followed by a restart).
    pub crashes: u8,
    /// Dropped watches (each followed by a relist).
    pub drops: u8,
    /// REG-4: quarantine released ClusterIPs (the stale-DNS mitigation).
    pub quarantine: bool,
    /// Whether the client Pod resolves and connects.
    pub client: bool,
    /// An injected bug.
    pub bug: Bug,
}

impl Default for Cfg {
    /// The default bound run by `cargo test`: 2 Services, 3 Pods, 2 nodes,
    /// 2 changes, 1 crash, 1 dropped watch, mitigation on.
    fn default() -> Self {
        Cfg {
            nodes: 2,
            pods: 3,
            initial_services: 2,
            service_ips: 2,
            changes: 2,
            crashes: 1,
            drops: 1,
            quarantine: true,
            client: true,
            bug: Bug::None,
        }
    }
}

impl Cfg {
    /// The model for these bounds.
    pub fn into_model(self) -> ProtocolModel {
        assert!((1..=2).contains(&self.nodes), "1 or 2 nodes");
        assert!((1..=4).contains(&self.pods), "1 to 4 Pods");
        assert!(usize::from(self.initial_services) <= catalog::SERVICES.len());
        ProtocolModel { cfg: self }
    }
}

/// The protocol model.
#[derive(Debug, Clone)]
pub struct ProtocolModel {
    /// Its bounds.
    pub cfg: Cfg,
}

/// One step of the model.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// User creates catalog Service `i`.
    CreateService(u8),
    /// User deletes catalog Service `i`.
    DeleteService(u8),
    /// Catalog Pod `i` is created (ready).
    CreatePod(u8),
    /// Catalog Pod `i` is deleted.
    DeletePod(u8),
    /// Catalog Pod `i`'s Ready condition changes.
    SetReady(u8, bool),
    /// Catalog Pod `i` gets a deletionTimestamp.
    Terminate(u8),
    /// A watcher takes its oldest event.
    Deliver(Watcher),
    /// A watch drops (or is compacted away).
    DropWatch(Watcher),
    /// A watcher relists after a drop.
    Relist(Watcher),
    /// A component crashes.
    Crash(Watcher),
    /// A crashed component restarts and lists.
    Restart(Watcher),
    /// The allocator releases a quarantined ClusterIP.
    ReleaseIp(IpAddr),
    /// The client resolves its target.
    Resolve,
    /// The client's cached answer expires (TTL).
    Expire,
}

impl ProtocolModel {
    /// A fresh, converged cluster: the initial Services and Pods written and
    /// every watcher caught up.
    pub fn initial_state(&self) -> State {
        let cfg = &self.cfg;
        let mut s = State {
            api: Default::default(),
            eps: Default::default(),
            dns: Default::default(),
            proxies: vec![Default::default(); usize::from(cfg.nodes)],
            watches: vec![Watch::default(); 2 + usize::from(cfg.nodes)],
            client: None,
            used: Used::default(),
            history: Default::default(),
        };
        for i in 0..usize::from(cfg.pods) {
            cfg.put_pod(&mut s, catalog::pod(i, true, cfg.nodes));
        }
        for i in 0..usize::from(cfg.initial_services) {
            cfg.create_service(&mut s, i);
        }
        self.settle(&mut s);
        s
    }

    /// Delivers everything, in a fixed order, until the state is quiescent
    /// (relisting broken watches and restarting crashed components first).
    pub fn settle(&self, s: &mut State) {
        loop {
            let mut progressed = false;
            for w in s.watchers().collect::<Vec<_>>() {
                match s.watch(w).status {
                    WatchStatus::Down => self.cfg.relist(s, w, true),
                    WatchStatus::Broken => self.cfg.relist(s, w, false),
                    WatchStatus::Live => {}
                }
                while self.cfg.deliver(s, w) {
                    progressed = true;
                }
            }
            if !progressed && s.is_quiescent() {
                return;
            }
        }
    }

    /// The shortest path (breadth-first, deterministic) from the initial
    /// state to a state violating the `always` property `name`, as actions.
    /// stateright's own discoveries are not minimal (later finds overwrite
    /// earlier ones), so traces for people come from here.
    pub fn shortest_counterexample(&self, name: &str) -> Option<Vec<Action>> {
        use std::collections::{HashMap, VecDeque};
        let property = self.properties().into_iter().find(|p| p.name == name)?;
        let init = self.initial_state();
        let mut parent: HashMap<State, Option<(State, Action)>> =
            HashMap::from([(init.clone(), None)]);
        let mut queue = VecDeque::from([init]);
        let mut actions = Vec::new();
        while let Some(s) = queue.pop_front() {
            if !(property.condition)(self, &s) {
                let mut path = Vec::new();
                let mut cur = s;
                while let Some(Some((prev, action))) = parent.get(&cur).cloned() {
                    path.push(action);
                    cur = prev;
                }
                path.reverse();
                return Some(path);
            }
            actions.clear();
            self.actions(&s, &mut actions);
            for a in actions.drain(..) {
                if let Some(next) = self.step(&s, a.clone())
                    && !parent.contains_key(&next)
                {
                    parent.insert(next.clone(), Some((s.clone(), a)));
                    queue.push_back(next);
                }
            }
        }
        None
    }

    /// Takes one step; `None` when the action is not enabled.
    pub fn step(&self, last: &State, action: Action) -> Option<State> {
        let cfg = &self.cfg;
        let mut s = last.clone();
        let change = |s: &mut State| s.used.changes += 1;
        match action {
            Action::CreateService(i) => {
                if !cfg.create_service(&mut s, usize::from(i)) {
                    return None;
                }
                change(&mut s);
            }
            Action::DeleteService(i) => {
                if !cfg.delete_service(&mut s, usize::from(i)) {
                    return None;
                }
                change(&mut s);
            }
            Action::CreatePod(i) => {
                let name = catalog::PODS[usize::from(i)].0;
                if s.api.pods.contains_key(name) {
                    return None;
                }
                cfg.put_pod(&mut s, catalog::pod(usize::from(i), true, cfg.nodes));
                change(&mut s);
            }
            Action::DeletePod(i) => {
                if !cfg.delete_pod(&mut s, usize::from(i)) {
                    return None;
                }
                change(&mut s);
            }
            Action::SetReady(i, ready) => {
                let mut pod = s.api.pods.get(catalog::PODS[usize::from(i)].0)?.0.clone();
                if pod.ready == ready {
                    return None;
                }
                pod.ready = ready;
                cfg.put_pod(&mut s, pod);
                change(&mut s);
            }
            Action::Terminate(i) => {
                let mut pod = s.api.pods.get(catalog::PODS[usize::from(i)].0)?.0.clone();
                if pod.terminating {
                    return None;
                }
                pod.terminating = true;
                cfg.put_pod(&mut s, pod);
                change(&mut s);
            }
            Action::Deliver(w) => {
                if !cfg.deliver(&mut s, w) {
                    return None;
                }
            }
            Action::DropWatch(w) => {
                if s.watch(w).status != WatchStatus::Live {
                    return None;
                }
                let watch = s.watch_mut(w);
                watch.status = WatchStatus::Broken;
                watch.queue.clear();
                s.used.drops += 1;
            }
            Action::Relist(w) => {
                if s.watch(w).status != WatchStatus::Broken {
                    return None;
                }
                cfg.relist(&mut s, w, false);
            }
            Action::Crash(w) => {
                if s.watch(w).status == WatchStatus::Down {
                    return None;
                }
                cfg.crash(&mut s, w);
                s.used.crashes += 1;
            }
            Action::Restart(w) => {
                if s.watch(w).status != WatchStatus::Down {
                    return None;
                }
                cfg.relist(&mut s, w, true);
            }
            Action::ReleaseIp(ip) => {
                if !cfg.may_release(&s, ip) {
                    return None;
                }
                s.api_mut().quarantined.remove(&ip);
            }
            Action::Resolve => {
                if s.client.is_some() || !cfg.client_resolve(&mut s) {
                    return None;
                }
            }
            Action::Expire => {
                s.client.take()?;
            }
        }
        Some(s)
    }
}

impl Model for ProtocolModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![self.initial_state()]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        let cfg = &self.cfg;
        if s.used.changes < cfg.changes {
            for i in 0..u8::try_from(catalog::SERVICES.len()).unwrap_or(0) {
                if s.api
                    .services
                    .contains_key(catalog::SERVICES[usize::from(i)].0)
                {
                    actions.push(Action::DeleteService(i));
                } else if cfg.free_ip(s).is_some() {
                    actions.push(Action::CreateService(i));
                }
            }
            for i in 0..cfg.pods {
                match s.api.pods.get(catalog::PODS[usize::from(i)].0) {
                    None => actions.push(Action::CreatePod(i)),
                    Some((pod, _)) => {
                        actions.push(Action::SetReady(i, !pod.ready));
                        if !pod.terminating {
                            actions.push(Action::Terminate(i));
                        }
                        actions.push(Action::DeletePod(i));
                    }
                }
            }
        }
        for w in s.watchers() {
            let watch = s.watch(w);
            if !watch.queue.is_empty() {
                actions.push(Action::Deliver(w));
            }
            match watch.status {
                WatchStatus::Live => {
                    if s.used.drops < cfg.drops {
                        actions.push(Action::DropWatch(w));
                    }
                    if s.used.crashes < cfg.crashes {
                        actions.push(Action::Crash(w));
                    }
                }
                WatchStatus::Broken => {
                    actions.push(Action::Relist(w));
                    if s.used.crashes < cfg.crashes {
                        actions.push(Action::Crash(w));
                    }
                }
                WatchStatus::Down => actions.push(Action::Restart(w)),
            }
        }
        for ip in &s.api.quarantined {
            if cfg.may_release(s, *ip) {
                actions.push(Action::ReleaseIp(*ip));
            }
        }
        if cfg.client {
            actions.push(if s.client.is_some() {
                Action::Expire
            } else {
                Action::Resolve
            });
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        self.step(last, action)
    }

    fn format_action(&self, action: &Action) -> String {
        let svc = |i: &u8| catalog::SERVICES[usize::from(*i)].0;
        let pod = |i: &u8| catalog::PODS[usize::from(*i)].0;
        match action {
            Action::CreateService(i) => format!("user creates Service {}", svc(i)),
            Action::DeleteService(i) => format!("user deletes Service {}", svc(i)),
            Action::CreatePod(i) => format!("Pod {} is created", pod(i)),
            Action::DeletePod(i) => format!("Pod {} is deleted", pod(i)),
            Action::SetReady(i, r) => format!(
                "Pod {} becomes {}",
                pod(i),
                if *r { "ready" } else { "unready" }
            ),
            Action::Terminate(i) => format!("Pod {} starts terminating", pod(i)),
            Action::Deliver(w) => format!("{w:?} takes its next event"),
            Action::DropWatch(w) => format!("{w:?}'s watch drops"),
            Action::Relist(w) => format!("{w:?} relists"),
            Action::Crash(w) => format!("{w:?} crashes"),
            Action::Restart(w) => format!("{w:?} restarts and lists"),
            Action::ReleaseIp(ip) => format!("allocator releases {ip} from quarantine"),
            Action::Resolve => format!("client resolves {}", catalog::CLIENT.1),
            Action::Expire => "client's cached answer expires".to_owned(),
        }
    }

    fn properties(&self) -> Vec<Property<Self>> {
        properties::all()
    }
}
