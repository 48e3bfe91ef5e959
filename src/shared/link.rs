//! Where commands go, with the `redis` crate's own support for each deployment:
//!
//! - one server: connection managers, which reconnect to it by themselves;
//! - a Sentinel set: the master the sentinels name (`redis::sentinel`, which also checks
//!   with `ROLE` that the node named is a master), on multiplexed connections; a
//!   connection error, a timeout or a `READONLY` answer (a master demoted by a failover)
//!   drops them, and the next command asks the sentinels again: a failover needs no
//!   restart;
//! - a Redis Cluster: the crate's cluster connection (slots, `MOVED`/`ASK`, reconnects).
//!
//! The events subscriber connects where events are heard: the server, the current
//! master, or any node of a cluster (a `PUBLISH` reaches every node of a cluster, so a
//! plain subscription on one node hears all; the seeds are tried in turn).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, ConnectionAddr, RedisError, RedisResult};

use super::SharedError;
use crate::config::{RedisNode, RedisSettings, RedisTopology};

/// A connection of whichever kind the deployment needs.
#[derive(Clone)]
pub(super) enum Conn {
    Managed(ConnectionManager),
    Multiplexed(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Managed(c) => c.req_packed_command(cmd),
            Conn::Multiplexed(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Managed(c) => c.get_db(),
            Conn::Multiplexed(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The connections to the master the sentinels named, made once per naming.
#[derive(Clone)]
pub(super) struct Master {
    generation: u64,
    client: redis::Client,
    conns: Vec<MultiplexedConnection>,
}

pub(super) enum Link {
    Single {
        conns: Vec<ConnectionManager>,
        client: redis::Client,
    },
    Sentinel {
        /// Asks the sentinels (one lookup at a time).
        resolver: Box<tokio::sync::Mutex<SentinelClient>>,
        master: Mutex<Option<Master>>,
        generation: AtomicU64,
        config: AsyncConnectionConfig,
        pool_size: usize,
    },
    Cluster {
        client: redis::cluster::ClusterClient,
        /// The cluster connection once made (it reconnects to nodes by itself).
        conn: Mutex<Option<ClusterConnection>>,
        /// Makes it (one attempt at a time).
        making: tokio::sync::Mutex<()>,
        /// For the events subscription: a plain connection to one of these.
        seeds: Vec<redis::Client>,
    },
}

fn addr(node: &RedisNode, tls: bool) -> ConnectionAddr {
    if tls {
        ConnectionAddr::TcpTls {
            host: node.host.clone(),
            port: node.port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(node.host.clone(), node.port)
    }
}

/// The connection info of a node: its address, the ACL user and password.
fn node_info(node: &RedisNode, tls: bool, s: &RedisSettings) -> RedisResult<redis::ConnectionInfo> {
    let mut redis = redis::RedisConnectionInfo::default();
    if let Some(u) = &s.username {
        redis = redis.set_username(u);
    }
    if let Some(p) = &s.password {
        redis = redis.set_password(p.expose_str());
    }
    redis::IntoConnectionInfo::into_connection_info(addr(node, tls)).map(|i| i.set_redis_settings(redis))
}

/// The CA to verify Redis's certificates with, when `shared.tls_ca_file` names one.
fn certificates(s: &RedisSettings) -> Option<redis::TlsCertificates> {
    s.tls_ca.as_ref().map(|pem| redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem.clone()),
    })
}

/// A client of one node, verifying its certificate with the configured CA, if any.
fn client_of(info: redis::ConnectionInfo, s: &RedisSettings) -> RedisResult<redis::Client> {
    match certificates(s) {
        Some(certs) => redis::Client::build_with_tls(info, certs),
        None => redis::Client::open(info),
    }
}

impl Link {
    /// Nothing connects yet: a replica starts while Redis is down, and connects on use.
    pub(super) fn open(s: &RedisSettings) -> Result<Link, SharedError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(s.connect_timeout))
            .set_response_timeout(Some(s.command_timeout));
        Ok(match &s.topology {
            RedisTopology::Single(url) => {
                let url = std::str::from_utf8(url.expose()).map_err(|_| SharedError::UrlNotUtf8)?;
                let mut info = redis::IntoConnectionInfo::into_connection_info(url).map_err(SharedError::Url)?;
                let mut redis = info.redis_settings().clone();
                if let Some(u) = &s.username {
                    redis = redis.set_username(u);
                }
                if let Some(p) = &s.password {
                    redis = redis.set_password(p.expose_str());
                }
                info = info.set_redis_settings(redis);
                let client = client_of(info, s).map_err(SharedError::Url)?;
                let cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(s.connect_timeout))
                    .set_response_timeout(Some(s.command_timeout))
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_secs(5))
                    .set_number_of_retries(3);
                let conns = (0..s.pool_size.max(1))
                    .map(|_| client.get_connection_manager_lazy(cfg.clone()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(SharedError::Url)?;
                Link::Single { conns, client }
            }
            RedisTopology::Sentinel {
                sentinels,
                master_name,
                tls,
                db,
            } => {
                let addrs = sentinels.iter().map(|n| addr(n, *tls));
                let mut b = SentinelClientBuilder::new(addrs, master_name, SentinelServerType::Master)
                    .map_err(SharedError::Url)?
                    .set_client_to_redis_db(*db);
                if *tls {
                    b = b.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
                }
                if let Some(u) = &s.username {
                    b = b.set_client_to_redis_username(u);
                }
                if let Some(p) = &s.password {
                    b = b.set_client_to_redis_password(p.expose_str());
                }
                if let Some(p) = &s.sentinel_password {
                    b = b.set_client_to_sentinel_password(p.expose_str());
                }
                if let Some(certs) = certificates(s) {
                    b = b
                        .set_client_to_redis_certificates(certs.clone())
                        .set_client_to_sentinel_certificates(certs);
                }
                Link::Sentinel {
                    resolver: Box::new(tokio::sync::Mutex::new(b.build().map_err(SharedError::Url)?)),
                    master: Mutex::new(None),
                    generation: AtomicU64::new(0),
                    config,
                    pool_size: s.pool_size.max(1),
                }
            }
            RedisTopology::Cluster { nodes, tls } => {
                let infos = nodes
                    .iter()
                    .map(|n| node_info(n, *tls, s))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(SharedError::Url)?;
                let mut b = redis::cluster::ClusterClientBuilder::new(infos.clone())
                    .connection_timeout(s.connect_timeout)
                    .response_timeout(s.command_timeout)
                    .retries(2);
                if let Some(u) = &s.username {
                    b = b.username(u);
                }
                if let Some(p) = &s.password {
                    b = b.password(p.expose_str());
                }
                if let Some(certs) = certificates(s) {
                    b = b.certs(certs);
                }
                let seeds = infos
                    .into_iter()
                    .map(|i| client_of(i, s))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(SharedError::Url)?;
                Link::Cluster {
                    client: b.build().map_err(SharedError::Url)?,
                    conn: Mutex::new(None),
                    making: tokio::sync::Mutex::new(()),
                    seeds,
                }
            }
        })
    }

    /// Keys of one operation need a hash tag to share a slot.
    pub(super) fn clustered(&self) -> bool {
        matches!(self, Link::Cluster { .. })
    }

    /// A connection, and the generation to name when it fails.
    pub(super) async fn conn(&self, turn: usize) -> RedisResult<(Conn, u64)> {
        match self {
            Link::Single { conns, .. } => Ok((Conn::Managed(conns[turn % conns.len()].clone()), 0)),
            Link::Sentinel { master, .. } => {
                {
                    let m = master.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(m) = m.as_ref() {
                        return Ok((Conn::Multiplexed(m.conns[turn % m.conns.len()].clone()), m.generation));
                    }
                }
                let m = self.find_master().await?;
                Ok((Conn::Multiplexed(m.conns[turn % m.conns.len()].clone()), m.generation))
            }
            Link::Cluster {
                client, conn, making, ..
            } => {
                let made = || conn.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if let Some(c) = made() {
                    return Ok((Conn::Cluster(c), 0));
                }
                let _one = making.lock().await;
                if let Some(c) = made() {
                    return Ok((Conn::Cluster(c), 0));
                }
                let c = client.get_async_connection().await?;
                *conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
                Ok((Conn::Cluster(c), 0))
            }
        }
    }

    /// Asks the sentinels for the master and connects to it (one lookup at a time: who
    /// waited finds the master another lookup found).
    async fn find_master(&self) -> RedisResult<Master> {
        let Link::Sentinel {
            resolver,
            master,
            generation,
            config,
            pool_size,
        } = self
        else {
            return Err(RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "not a Sentinel set",
            )));
        };
        let mut sentinel = resolver.lock().await;
        if let Some(m) = master.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Ok(m.clone());
        }
        let client = sentinel.async_get_client().await?;
        let mut conns = Vec::with_capacity(*pool_size);
        for _ in 0..*pool_size {
            conns.push(client.get_multiplexed_async_connection_with_config(config).await?);
        }
        let found = Master {
            generation: generation.fetch_add(1, Ordering::Relaxed) + 1,
            client,
            conns,
        };
        let handle = found.clone();
        tracing::info!(
            generation = found.generation,
            "shared store: connected to the master the sentinels name"
        );
        *master.lock().unwrap_or_else(|p| p.into_inner()) = Some(found);
        Ok(handle)
    }

    /// A command on a connection of `generation` (`None`: whichever is current) failed
    /// (`None`: timed out). On a Sentinel set, an error that may mean the master moved
    /// drops its connections, so the next command asks the sentinels again.
    pub(super) fn failed(&self, generation: Option<u64>, error: Option<&RedisError>) {
        let Link::Sentinel { master, .. } = self else { return };
        let moved = error.is_none_or(|e| {
            e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_timeout()
                || e.is_unrecoverable_error()
                || matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"))
        });
        if !moved {
            return;
        }
        let mut m = master.lock().unwrap_or_else(|p| p.into_inner());
        if m.as_ref().is_some_and(|m| generation.is_none_or(|g| m.generation == g)) {
            *m = None;
        }
    }

    /// Where to subscribe to the events channel: the server, the master the sentinels
    /// name now, or the `turn`th seed of a cluster; with the master's generation.
    pub(super) async fn subscriber(&self, turn: usize) -> RedisResult<(redis::Client, u64)> {
        match self {
            Link::Single { client, .. } => Ok((client.clone(), 0)),
            Link::Sentinel { master, .. } => {
                if let Some(m) = master.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                    return Ok((m.client.clone(), m.generation));
                }
                let m = self.find_master().await?;
                Ok((m.client, m.generation))
            }
            Link::Cluster { seeds, .. } => Ok((seeds[turn % seeds.len()].clone(), 0)),
        }
    }

    /// Whether the master of `generation` may no longer be the master (its connections
    /// were dropped, or another was found since): a subscription made on it may miss
    /// what is published on the new one, and is made again.
    pub(super) fn moved_from(&self, generation: u64) -> bool {
        match self {
            Link::Sentinel { master, .. } => {
                let m = master.lock().unwrap_or_else(|p| p.into_inner());
                m.as_ref().is_none_or(|m| m.generation != generation)
            }
            Link::Single { .. } | Link::Cluster { .. } => false,
        }
    }
}

/// `WAIT` for `replicas` within `timeout`: how many confirmed.
pub(super) async fn wait_replicas(conn: &mut Conn, replicas: u32, timeout: Duration) -> RedisResult<i64> {
    redis::cmd("WAIT")
        .arg(replicas)
        .arg(timeout.as_millis().max(1) as u64)
        .query_async(conn)
        .await
}
