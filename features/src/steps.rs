//! The step definitions. Each checks something that can fail, against any
//! [`Cluster`](crate::Cluster).

use std::collections::BTreeSet;

use cucumber::{given, then, when};

use crate::{Connect, EndpointView, SignpostWorld};

fn list(text: &str) -> BTreeSet<String> {
    text.split(',')
        .map(|s| s.trim().trim_matches('"').to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

#[given(expr = "a Service {string} selecting app={word}")]
fn service(w: &mut SignpostWorld, name: String, app: String) -> Result<(), String> {
    w.cluster.create_service(&name, &app)
}

#[given(expr = "a ready Pod {string} with app={word} on {string}")]
#[when(expr = "a ready Pod {string} with app={word} starts on {string}")]
fn pod(w: &mut SignpostWorld, name: String, app: String, node: String) -> Result<(), String> {
    w.cluster.start_pod(&name, &app, &node)
}

#[when(expr = "the Service {string} is deleted")]
fn delete_service(w: &mut SignpostWorld, name: String) -> Result<(), String> {
    w.cluster.delete_service(&name)
}

#[when(expr = "Pod {string} becomes unready")]
fn unready(w: &mut SignpostWorld, pod: String) -> Result<(), String> {
    w.cluster.set_ready(&pod, false)
}

#[when(expr = "Pod {string} becomes ready")]
fn ready(w: &mut SignpostWorld, pod: String) -> Result<(), String> {
    w.cluster.set_ready(&pod, true)
}

#[when(expr = "Pod {string} starts terminating")]
fn terminating(w: &mut SignpostWorld, pod: String) -> Result<(), String> {
    w.cluster.terminate(&pod)
}

#[when(expr = "Pod {string} is deleted")]
fn delete_pod(w: &mut SignpostWorld, pod: String) -> Result<(), String> {
    w.cluster.delete_pod(&pod)
}

#[given("the cluster has settled")]
#[when("the cluster settles")]
fn settle(w: &mut SignpostWorld) -> Result<(), String> {
    w.cluster.settle()
}

#[when(expr = "{string} resolves {string}")]
fn resolves(w: &mut SignpostWorld, pod: String, name: String) {
    w.resolved = Some(w.cluster.resolve(&pod, &name));
}

#[when(expr = "{string} connects to {string} on port {int}")]
fn connects(w: &mut SignpostWorld, pod: String, name: String, port: u16) -> Result<(), String> {
    let ips = w.cluster.resolve(&pod, &name)?;
    let ip = *ips.first().ok_or("empty answer")?;
    w.connected = Some(w.cluster.connect(&pod, ip, port)?);
    Ok(())
}

#[then(expr = "the answer is the ClusterIP of {string}")]
fn answer_is_cluster_ip(w: &mut SignpostWorld, service: String) -> Result<(), String> {
    let want = w
        .cluster
        .cluster_ip(&service)
        .ok_or(format!("{service} has no ClusterIP"))?;
    match &w.resolved {
        Some(Ok(ips)) if ips == &vec![want] => Ok(()),
        other => Err(format!("expected [{want}], resolved {other:?}")),
    }
}

#[then("the name does not resolve")]
fn does_not_resolve(w: &mut SignpostWorld) -> Result<(), String> {
    match &w.resolved {
        Some(Err(_)) => Ok(()),
        other => Err(format!("expected a failed resolution, got {other:?}")),
    }
}

#[then(expr = "the connection reaches one of {string}")]
fn reaches(w: &mut SignpostWorld, pods: String) -> Result<(), String> {
    let allowed = list(&pods);
    match &w.connected {
        Some(Connect::Reached(got)) if !got.is_empty() && got.is_subset(&allowed) => Ok(()),
        other => Err(format!("expected to reach only {allowed:?}, got {other:?}")),
    }
}

#[then(expr = "every connection reaches {string}")]
fn reaches_exactly(w: &mut SignpostWorld, pods: String) -> Result<(), String> {
    let want = list(&pods);
    match &w.connected {
        Some(Connect::Reached(got)) if *got == want => Ok(()),
        other => Err(format!(
            "expected the backends to be exactly {want:?}, got {other:?}"
        )),
    }
}

#[then("the connection is refused")]
fn refused(w: &mut SignpostWorld) -> Result<(), String> {
    match &w.connected {
        Some(Connect::Refused) => Ok(()),
        other => Err(format!("expected a refusal, got {other:?}")),
    }
}

#[then(expr = "the endpoints of {string} are {string}")]
fn endpoints(w: &mut SignpostWorld, service: String, spec: String) -> Result<(), String> {
    // "voyager-0 ready, voyager-1 terminating, voyager-2 unready"
    let want: BTreeSet<EndpointView> = spec
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (pod, state) = item
                .split_once(' ')
                .ok_or(format!("bad endpoint spec {item:?}"))?;
            let (ready, terminating) = match state {
                "ready" => (true, false),
                "unready" => (false, false),
                "terminating" => (false, true),
                other => return Err(format!("unknown endpoint state {other:?}")),
            };
            Ok(EndpointView {
                pod: pod.to_owned(),
                ready,
                terminating,
            })
        })
        .collect::<Result<_, String>>()?;
    let got = w.cluster.endpoints(&service);
    if got == want {
        Ok(())
    } else {
        Err(format!("expected {want:?}, got {got:?}"))
    }
}
