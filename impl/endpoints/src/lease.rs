//! Leader election through a `coordination.k8s.io/v1` Lease, so two replicas
//! never write at once. [`decide`] is the pure rule; [`Elector`] does the I/O
//! with optimistic concurrency (a lost race is simply "not leader").

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

use crate::{Error, Result};

/// What a candidate should do with the lease it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No lease exists: create it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Its holder let it expire: take it over.
    TakeOver,
    /// Someone else holds it.
    Wait {
        /// The current holder.
        holder: String,
    },
}

/// The rule: we may write while we hold an unexpired lease; an expired
/// lease (renew time + duration in the past) may be taken over.
pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else {
        return Decision::Create;
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == me {
        return Decision::Renew;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let renewed = spec.renew_time.as_ref().map_or(0, |t| t.0.as_millisecond());
    if holder.is_empty() || renewed + duration * 1000 < now.as_millisecond() {
        Decision::TakeOver
    } else {
        Decision::Wait { holder }
    }
}

/// A replica's default identity, unique per process start: this Pod's name
/// (`$POD_NAME`, else `$HOSTNAME`, else the kernel's hostname) and 128
/// random bits, as client-go's `hostname_uuid`. The process ID alone is not
/// unique: in containers it is usually 1 in every replica, and two
/// replicas with one identity would both renew the lease and both lead.
pub fn default_identity() -> String {
    let host = std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "signpost-endpoints".into());
    format!("{host}_{}", random_hex())
}

/// 128 bits from the kernel's random source, as hex.
fn random_hex() -> String {
    use std::io::Read;
    let mut b = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if read.is_err() {
        // No /dev/urandom: fall back to what differs between processes and instants.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b = (t ^ (u128::from(std::process::id()) << 64)).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A candidate for one lease.
#[derive(Debug, Clone)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl Elector {
    /// A candidate named `identity` for lease `name`.
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        Elector {
            api,
            name: name.into(),
            identity: identity.into(),
            duration,
        }
    }

    /// The lease duration.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    fn spec(&self, now: Timestamp, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX),
            ),
            renew_time: Some(MicroTime(now)),
            acquire_time: acquired.or(Some(MicroTime(now))),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One round: returns whether we hold the lease afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.name).await?;
        let decision = decide(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &self.identity,
            now,
        );
        let result = match (decision, current) {
            (Decision::Create, _) => {
                let lease = Lease {
                    metadata: kube::api::ObjectMeta {
                        name: Some(self.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(self.spec(now, 0, None)),
                };
                self.api
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            (Decision::Renew, Some(mut lease)) => {
                let old = lease.spec.take().unwrap_or_default();
                lease.spec =
                    Some(self.spec(now, old.lease_transitions.unwrap_or(0), old.acquire_time));
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            (Decision::TakeOver, Some(mut lease)) => {
                let old = lease.spec.take().unwrap_or_default();
                lease.spec = Some(self.spec(now, old.lease_transitions.unwrap_or(0) + 1, None));
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            (Decision::Wait { .. }, _) | (_, None) => return Ok(false),
        };
        match result {
            Ok(()) => Ok(true),
            // Lost the race (409 on create or replace): someone else wrote first.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(Error::Kube(e)),
        }
    }

    /// Gives the lease up on a graceful shutdown, if we hold it: no holder
    /// and a one-second duration, so a standby takes over at its next try
    /// instead of waiting out the lease (client-go's ReleaseOnCancel does
    /// the same). Returns whether we held it.
    pub async fn release(&self) -> Result<bool> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(false);
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(false);
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(false);
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        spec.acquire_time = None;
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            // Someone wrote in between: it is not ours to release any more.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(Error::Kube(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed_ms: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(10),
            renew_time: Some(MicroTime(Timestamp::from_millisecond(renewed_ms).unwrap())),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn the_rule() {
        let now = Timestamp::from_millisecond(100_000).unwrap();
        assert_eq!(decide(None, "a", now), Decision::Create);
        assert_eq!(decide(Some(&spec("a", 0)), "a", now), Decision::Renew);
        assert_eq!(
            decide(Some(&spec("b", 95_000)), "a", now),
            Decision::Wait { holder: "b".into() }
        );
        assert_eq!(
            decide(Some(&spec("b", 89_000)), "a", now),
            Decision::TakeOver
        );
        assert_eq!(
            decide(Some(&spec("", 99_000)), "a", now),
            Decision::TakeOver
        );
    }

    #[test]
    fn default_identities_differ_between_replicas_with_one_pid_and_host() {
        // Two replicas in containers: same PID (1), same image; before, both
        // were `signpost-endpoints-1` and `decide` told both to renew.
        let a = super::default_identity();
        let b = super::default_identity();
        assert_ne!(a, b);
        let (host, rand) = a.rsplit_once('_').unwrap();
        assert!(!host.is_empty());
        assert_eq!(rand.len(), 32);
        let now = Timestamp::from_millisecond(100_000).unwrap();
        assert_eq!(
            decide(Some(&spec(&a, 99_000)), &b, now),
            Decision::Wait { holder: a.clone() }
        );
    }
}
