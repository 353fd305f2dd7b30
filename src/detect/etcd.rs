//! The few etcd operations detection needs, over one client per endpoint.
//!
//! One client per member, tried in turn (the last one that answered first), each request
//! bounded by `DETECT_ETCD_REQUEST_TIMEOUT_MS`, and every request sent with etcd's
//! "require leader" flag: a member cut off from the majority answers at once that it has no
//! leader instead of serving a stale read or hanging. So "etcd answered" always means "a
//! majority of the members is reachable through some member", and `status` can say which
//! members this node reached.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use serde::Serialize;

use crate::limits::DETECT_ETCD_REQUEST_TIMEOUT_MS;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd endpoint {url}: {reason}")]
    Endpoint { url: String, reason: String },
    #[error("no etcd member with a quorum answered {what} ({errors})")]
    Unreachable { what: &'static str, errors: String },
}

/// What this node last saw of one endpoint.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EndpointSeen {
    pub url: String,
    pub reachable: bool,
    pub last_ok_unix_ms: Option<u64>,
    pub last_error: Option<String>,
    /// The member's name, from the member list.
    pub member: Option<String>,
}

pub struct Etcd {
    clients: Vec<Client>,
    preferred: AtomicUsize,
    seen: Mutex<Vec<EndpointSeen>>,
}

/// The outcome of trying to take a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Take {
    Taken,
    HeldBy(String),
}

pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Etcd {
    /// Clients for every endpoint. Connecting is lazy: an unreachable cluster shows up at the
    /// first request, as [`EtcdError::Unreachable`].
    pub async fn new(urls: &[String]) -> Result<Etcd, EtcdError> {
        let t = Duration::from_millis(DETECT_ETCD_REQUEST_TIMEOUT_MS);
        let mut clients = Vec::new();
        for u in urls {
            let opts = ConnectOptions::new()
                .with_connect_timeout(t)
                .with_timeout(t)
                .with_keep_alive(t, t)
                .with_require_leader(true);
            let c = Client::connect([u.as_str()], Some(opts))
                .await
                .map_err(|e| EtcdError::Endpoint {
                    url: u.clone(),
                    reason: e.to_string(),
                })?;
            clients.push(c);
        }
        Ok(Etcd {
            clients,
            preferred: AtomicUsize::new(0),
            seen: Mutex::new(
                urls.iter()
                    .map(|u| EndpointSeen {
                        url: u.clone(),
                        ..Default::default()
                    })
                    .collect(),
            ),
        })
    }

    pub fn seen(&self) -> Vec<EndpointSeen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn mark(&self, i: usize, r: Result<(), String>) {
        let mut s = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let e = &mut s[i];
        match r {
            Ok(()) => {
                e.reachable = true;
                e.last_ok_unix_ms = Some(unix_ms());
                e.last_error = None;
            }
            Err(why) => {
                e.reachable = false;
                e.last_error = Some(why);
            }
        }
    }

    /// Run `f` against the endpoints in turn until one answers; returns its answer and when the
    /// successful attempt was sent.
    async fn any<T, F, Fut>(&self, what: &'static str, f: F) -> Result<(T, Instant), EtcdError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.clients.len();
        let first = self.preferred.load(Ordering::Relaxed);
        let mut errors = Vec::new();
        for k in 0..n {
            let i = (first + k) % n;
            let sent = Instant::now();
            let r = tokio::time::timeout(
                Duration::from_millis(DETECT_ETCD_REQUEST_TIMEOUT_MS),
                f(self.clients[i].clone()),
            )
            .await;
            let why = match r {
                Ok(Ok(v)) => {
                    self.mark(i, Ok(()));
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok((v, sent));
                }
                Ok(Err(e)) => short(&e.to_string()),
                Err(_) => format!("no answer within {DETECT_ETCD_REQUEST_TIMEOUT_MS} ms"),
            };
            self.mark(i, Err(why.clone()));
            errors.push(format!(
                "{}: {why}",
                self.seen.lock().unwrap_or_else(|p| p.into_inner())[i].url
            ));
        }
        Err(EtcdError::Unreachable {
            what,
            errors: errors.join("; "),
        })
    }

    /// A new lease of `ttl_s` seconds; returns its id and when the grant was sent.
    pub async fn grant(&self, ttl_s: i64) -> Result<(i64, Instant), EtcdError> {
        self.any("a lease grant", |mut c| async move {
            c.lease_grant(ttl_s, None).await.map(|r| r.id())
        })
        .await
    }

    /// Renew a lease; returns the TTL etcd answered (0: the lease is gone) and when the renewal
    /// was sent.
    pub async fn keep_alive(&self, id: i64) -> Result<(i64, Instant), EtcdError> {
        self.any("a lease renewal", |mut c| async move {
            let r = async {
                let (mut keeper, mut stream) = c.lease_keep_alive(id).await?;
                keeper.keep_alive().await?;
                match stream.message().await? {
                    Some(r) => Ok(r.ttl()),
                    None => Err(etcd_client::Error::InvalidArgs(
                        "keep-alive stream ended".into(),
                    )),
                }
            }
            .await;
            match r {
                // A majority answered: the lease expired (or was revoked).
                Err(e) if e.to_string().contains("lease not found") => Ok(0),
                r => r,
            }
        })
        .await
    }

    pub async fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        self.any("a lease revoke", |mut c| async move {
            c.lease_revoke(id).await.map(|_| ())
        })
        .await
        .map(|_| ())
    }

    /// Put `key = me` with `lease` if the key is free (or still names `me`, left by this node
    /// before a restart); otherwise say who holds it.
    pub async fn take(&self, key: &str, me: &str, lease: i64) -> Result<Take, EtcdError> {
        let (k, v) = (key.to_owned(), me.to_owned());
        let (held, _) = self
            .any("a lease key take", |mut c| {
                let (k, v) = (k.clone(), v.clone());
                async move {
                    let put = TxnOp::put(
                        k.clone(),
                        v.clone(),
                        Some(PutOptions::new().with_lease(lease)),
                    );
                    let free = Txn::new()
                        .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
                        .and_then([put.clone()])
                        .or_else([TxnOp::get(k.clone(), None)]);
                    let r = c.txn(free).await?;
                    if r.succeeded() {
                        return Ok(None);
                    }
                    let holder = holder_of(&r.op_responses());
                    if holder.as_deref() == Some(v.as_str()) {
                        let mine = Txn::new()
                            .when([Compare::value(k.clone(), CompareOp::Equal, v.clone())])
                            .and_then([put])
                            .or_else([TxnOp::get(k, None)]);
                        let r = c.txn(mine).await?;
                        if r.succeeded() {
                            return Ok(None);
                        }
                        return Ok(holder_of(&r.op_responses()));
                    }
                    Ok(holder)
                }
            })
            .await?;
        Ok(match held {
            None => Take::Taken,
            Some(h) => Take::HeldBy(h),
        })
    }

    /// Who holds `key` and how long its lease has left (ms), if anybody.
    pub async fn holder(&self, key: &str) -> Result<Option<(String, Option<u64>)>, EtcdError> {
        let k = key.to_owned();
        let (r, _) = self
            .any("a lease key read", |mut c| {
                let k = k.clone();
                async move {
                    let g = c.get(k, None).await?;
                    let Some(kv) = g.kvs().first() else {
                        return Ok(None);
                    };
                    let holder = kv.value_str().unwrap_or("?").to_owned();
                    let ttl = match kv.lease() {
                        0 => None,
                        id => c
                            .lease_time_to_live(id, None)
                            .await
                            .ok()
                            .map(|t| (t.ttl().max(0) as u64) * 1000),
                    };
                    Ok(Some((holder, ttl)))
                }
            })
            .await?;
        Ok(r)
    }

    /// Refresh the member names of the endpoints (for `status`).
    pub async fn refresh_members(&self) {
        let Ok((members, _)) = self
            .any("the member list", |mut c| async move {
                c.member_list().await.map(|m| {
                    m.members()
                        .iter()
                        .map(|m| (m.name().to_owned(), m.client_urls().to_vec()))
                        .collect::<Vec<_>>()
                })
            })
            .await
        else {
            return;
        };
        let mut s = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for e in s.iter_mut() {
            let host = e.url.trim_end_matches('/');
            e.member = members
                .iter()
                .find(|(_, urls)| urls.iter().any(|u| u.trim_end_matches('/') == host))
                .map(|(n, _)| n.clone());
        }
    }
}

fn holder_of(r: &[TxnOpResponse]) -> Option<String> {
    r.iter().find_map(|op| match op {
        TxnOpResponse::Get(g) => g
            .kvs()
            .first()
            .map(|kv| kv.value_str().unwrap_or("?").to_owned()),
        _ => None,
    })
}

/// The first line of an error, bounded (tonic errors carry long details).
fn short(s: &str) -> String {
    let l = s.lines().next().unwrap_or("");
    l.chars().take(200).collect()
}
