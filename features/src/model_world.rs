//! The model as a [`Cluster`]: the protocol model's actors, driven one user
//! action at a time and settled deterministically. Only the model's catalog
//! of Services, Pods and nodes exists here; anything else is an error that
//! names the catalog.

use std::collections::BTreeSet;
use std::net::IpAddr;

use signpost_model::cluster::{Protocol, Question, RType, ResolvConf, ResolverLib, VirtualKey};
use signpost_model::protocol::catalog::{self, DNS_IP, NODES, PODS, SERVICES, ZONE};
use signpost_model::protocol::{Action, Bug, Cfg, ProtocolModel, State};
use signpost_model::spec::{classify, dns_answer, resolve};

use crate::{Cluster, Connect, EndpointView};

/// The model world.
#[derive(Debug)]
pub struct ModelCluster {
    model: ProtocolModel,
    state: State,
}

const NODE_COUNT: u8 = 2;

impl ModelCluster {
    /// An empty cluster of two nodes: no Services, no Pods.
    pub fn new() -> Self {
        let model = Cfg {
            nodes: NODE_COUNT,
            pods: 4,
            initial_services: 0,
            service_ips: 4,
            changes: u8::MAX,
            crashes: 0,
            drops: 0,
            quarantine: true,
            client: false,
            bug: Bug::None,
        }
        .into_model();
        let mut state = model.initial_state();
        for i in 0..4 {
            state = model
                .step(&state, Action::DeletePod(i))
                .expect("catalog Pods start present");
        }
        model.settle(&mut state);
        ModelCluster { model, state }
    }

    fn act(&mut self, action: Action) -> bool {
        match self.model.step(&self.state, action) {
            Some(next) => {
                self.state = next;
                true
            }
            None => false,
        }
    }

    fn pod_index(name: &str) -> Result<u8, String> {
        catalog::pod_index(name)
            .and_then(|i| u8::try_from(i).ok())
            .ok_or_else(|| {
                format!(
                    "the model world has no Pod {name:?} (it knows {:?})",
                    PODS.map(|p| p.0)
                )
            })
    }
}

impl Default for ModelCluster {
    fn default() -> Self {
        Self::new()
    }
}

impl Cluster for ModelCluster {
    fn create_service(&mut self, name: &str, app: &str) -> Result<(), String> {
        let i = catalog::service_index(name)
            .filter(|i| SERVICES[*i].1 == app)
            .ok_or_else(|| format!("the model world has no Service {name:?} selecting app={app} (it knows {SERVICES:?})"))?;
        let i = u8::try_from(i).map_err(|e| e.to_string())?;
        if self.act(Action::CreateService(i)) {
            Ok(())
        } else {
            Err(format!("Service {name} was not admitted"))
        }
    }

    fn delete_service(&mut self, name: &str) -> Result<(), String> {
        let i = catalog::service_index(name).ok_or(format!("no Service {name:?}"))?;
        let i = u8::try_from(i).map_err(|e| e.to_string())?;
        if self.act(Action::DeleteService(i)) {
            Ok(())
        } else {
            Err(format!("Service {name} does not exist"))
        }
    }

    fn start_pod(&mut self, name: &str, app: &str, node: &str) -> Result<(), String> {
        let i = Self::pod_index(name)?;
        let (_, want_app, want_node, _) = PODS[usize::from(i)];
        let want_node = NODES[want_node % usize::from(NODE_COUNT)].0;
        if want_app != app || want_node != node {
            return Err(format!(
                "in the model {name} has app={want_app} and runs on {want_node}"
            ));
        }
        if self.act(Action::CreatePod(i)) {
            Ok(())
        } else {
            Err(format!("Pod {name} already exists"))
        }
    }

    fn set_ready(&mut self, pod: &str, ready: bool) -> Result<(), String> {
        let i = Self::pod_index(pod)?;
        self.act(Action::SetReady(i, ready));
        Ok(())
    }

    fn terminate(&mut self, pod: &str) -> Result<(), String> {
        let i = Self::pod_index(pod)?;
        if self.act(Action::Terminate(i)) {
            Ok(())
        } else {
            Err(format!("Pod {pod} is absent or already terminating"))
        }
    }

    fn delete_pod(&mut self, pod: &str) -> Result<(), String> {
        let i = Self::pod_index(pod)?;
        if self.act(Action::DeletePod(i)) {
            Ok(())
        } else {
            Err(format!("Pod {pod} does not exist"))
        }
    }

    fn settle(&mut self) -> Result<(), String> {
        self.model.settle(&mut self.state);
        Ok(())
    }

    fn cluster_ip(&self, service: &str) -> Option<IpAddr> {
        self.state
            .api
            .services
            .get(service)
            .and_then(|(s, _)| s.cluster_ips.ips().first().copied())
    }

    fn resolve(&mut self, pod: &str, name: &str) -> Result<Vec<IpAddr>, String> {
        Self::pod_index(pod)?;
        let conf = ResolvConf::kubelet(
            catalog::NAMESPACE,
            ZONE,
            DNS_IP.parse().map_err(|_| "bad DNS IP")?,
        );
        let snap = self.state.dns_snapshot();
        let res = resolve(&conf, name, ResolverLib::Glibc, |n| {
            classify(&dns_answer(&snap, &Question::new(n, RType::A)))
        });
        res.result
            .map_err(|e| format!("{name}: {e:?} after trying {:?}", res.tried))
    }

    fn connect(&mut self, pod: &str, ip: IpAddr, port: u16) -> Result<Connect, String> {
        let i = usize::from(Self::pod_index(pod)?);
        let node = PODS[i].2 % usize::from(NODE_COUNT);
        let kernel = &self.state.proxies[node].kernel;
        Ok(
            match kernel.get(&VirtualKey {
                ip,
                protocol: Protocol::Tcp,
                port,
            }) {
                Some(vs) if vs.rejects() => Connect::Refused,
                Some(vs) => Connect::Reached(
                    vs.backends
                        .iter()
                        .map(|b| {
                            catalog::pod_by_ip(b.ip())
                                .map_or_else(|| b.to_string(), |p| PODS[p].0.to_owned())
                        })
                        .collect(),
                ),
                None if kernel.keys().any(|k| k.ip == ip) => Connect::Refused,
                None => Connect::NoRoute,
            },
        )
    }

    fn endpoints(&self, service: &str) -> BTreeSet<EndpointView> {
        self.state
            .api
            .slice_list()
            .into_iter()
            .filter(|s| s.service == service)
            .flat_map(|s| s.endpoints.iter())
            .map(|e| EndpointView {
                pod: e.pod.clone().unwrap_or_default(),
                ready: e.ready,
                terminating: e.terminating,
            })
            .collect()
    }
}
