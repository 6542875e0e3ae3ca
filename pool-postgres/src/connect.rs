//! Opening a connection as libpq does: each host in turn (shuffled under
//! `load_balance_hosts=random`), each bounded by `connect_timeout`, with TCP keepalive and
//! `tcp_user_timeout` on the socket, TLS as `sslmode` says, and the host skipped when its
//! session does not match `target_session_attrs`. tokio-postgres's `connect_raw` only runs
//! the startup handshake over the stream it is given, so all of this is done here.

use std::ops::Range;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{select, Either};
use tokio_postgres::config::{Host, LoadBalanceHosts, TargetSessionAttrs};
use tokio_postgres::{Config, NoTls, SimpleQueryMessage};

use crate::conn::{PgConnection, Target};
use crate::error::PgError;
use crate::runtime::{PgRuntime, Stream, TcpOptions};
use crate::tls::{self, SslMode, Tls};
use crate::wire::{Link, Tracked, Wire};

/// A place to connect to and the name its certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) target: Arc<Target>,
    /// The `host` (even when `hostaddr` gives the address), for TLS's server name.
    pub(crate) name: String,
}

/// Everything a connect needs, read from the configuration once.
#[derive(Debug)]
pub(crate) struct Connector {
    endpoints: Vec<Endpoint>,
    /// The configuration tokio-postgres runs the startup with: TLS is done before it, so
    /// `sslmode=disable` (which also makes cancel requests plaintext).
    startup: Config,
    tcp: TcpOptions,
    connect_timeout: Option<Duration>,
    attrs: TargetSessionAttrs,
    random: bool,
    pub(crate) tls: Tls,
}

impl Connector {
    pub(crate) fn new(config: &Config, tls: Tls) -> Self {
        let mut startup = config.clone();
        startup.ssl_mode(tokio_postgres::config::SslMode::Disable);
        Self {
            endpoints: endpoints(config),
            startup,
            tcp: crate::runtime::tcp_options(config),
            connect_timeout: config.get_connect_timeout().copied(),
            attrs: config.get_target_session_attrs(),
            random: config.get_load_balance_hosts() == LoadBalanceHosts::Random,
            tls,
        }
    }

    /// Tries each host in turn; the last host's error if none gives a connection.
    pub(crate) async fn connect<R: PgRuntime>(&self, rt: &R) -> Result<PgConnection, PgError> {
        let mut last = PgError::NoHost;
        for i in order(self.endpoints.len(), self.random) {
            let endpoint = &self.endpoints[i];
            let attempt = self.connect_to(rt, endpoint);
            let result = match self.connect_timeout {
                Some(after) => bounded(rt, after, attempt).await.unwrap_or_else(|| {
                    Err(PgError::TimedOut {
                        target: endpoint.target.to_string(),
                        after,
                    })
                }),
                None => attempt.await,
            };
            match result {
                Ok(conn) => return Ok(conn),
                Err(error) => {
                    tracing::debug!(target = %endpoint.target, %error, "connect failed");
                    last = error;
                }
            }
        }
        Err(last)
    }

    async fn connect_to<R: PgRuntime>(
        &self,
        rt: &R,
        endpoint: &Endpoint,
    ) -> Result<PgConnection, PgError> {
        let target = &endpoint.target;
        let socket = open(rt, target, &self.tcp).await?;
        let stream = match &**target {
            Target::Tcp { .. } => {
                tls::negotiate(socket, &self.tls, &endpoint.name, &target.to_string()).await?
            }
            #[cfg(unix)]
            Target::Unix(_) => match self.tls.settings.mode {
                // As libpq: no TLS over a Unix-domain socket.
                SslMode::Disable | SslMode::Prefer => socket,
                _ => {
                    return Err(PgError::Config(format!(
                        "{target}: TLS is not used over a Unix-domain socket, and the sslmode requires it"
                    )))
                }
            },
        };
        let wire = Wire::new();
        let (client, connection) = self
            .startup
            .connect_raw(Tracked::new(stream, Arc::clone(&wire)), NoTls)
            .await
            .map_err(|error| PgError::Startup {
                target: target.to_string(),
                error,
            })?;
        let link = Link::new(Arc::clone(&wire), Box::new(connection));
        rt.spawn(Arc::clone(&link).run());
        let mut conn = PgConnection {
            client,
            link,
            target: Arc::clone(target),
            clean_mark: 0,
            listen_mark: 0,
            unnamed: None,
            describing: Default::default(),
        };
        self.check_session(&conn, target).await?;
        // The check is not a borrower's use.
        conn.clean_mark = wire.sent();
        conn.listen_mark = wire.listens();
        Ok(conn)
    }

    /// `target_session_attrs`: asks whether the session is read-only, as libpq does, unless
    /// any session will do.
    async fn check_session(&self, conn: &PgConnection, target: &Target) -> Result<(), PgError> {
        let wanted = match self.attrs {
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::ReadOnly => "read-only",
            _ => return Ok(()),
        };
        let messages = conn
            .client
            .simple_query("SHOW transaction_read_only")
            .await
            .map_err(|error| PgError::Startup {
                target: target.to_string(),
                error,
            })?;
        let read_only = messages.iter().any(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0) == Some("on"),
            _ => false,
        });
        if read_only == (wanted == "read-only") {
            return Ok(());
        }
        Err(PgError::SessionAttrs {
            target: target.to_string(),
            wanted,
            read_only,
        })
    }
}

/// Runs `future` for at most `after` on the runtime's timers; `None` if it did not finish.
async fn bounded<R: PgRuntime, F: std::future::Future>(
    rt: &R,
    after: Duration,
    future: F,
) -> Option<F::Output> {
    let Some(deadline) = rt.now().checked_add(after) else {
        return Some(future.await);
    };
    match select(pin!(future), pin!(rt.sleep_until(deadline))).await {
        Either::Left((out, _)) => Some(out),
        Either::Right(_) => None,
    }
}

/// Opens a socket to `target` with the runtime.
pub(crate) async fn open<R: PgRuntime>(
    rt: &R,
    target: &Target,
    tcp: &TcpOptions,
) -> Result<Stream, PgError> {
    let result = match target {
        Target::Tcp { host, port } => rt.connect_tcp(host, *port, tcp).await,
        #[cfg(unix)]
        Target::Unix(path) => rt.connect_unix(path).await,
    };
    result.map_err(|source| PgError::Connect {
        target: target.to_string(),
        source,
    })
}

/// The order to try `n` hosts in: as given, or shuffled.
fn order(n: usize, random: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if random {
        fastrand::shuffle(&mut order);
    }
    order
}

/// The places to connect to, in order, as libpq reads `host`, `hostaddr` and `port`.
pub(crate) fn endpoints(config: &Config) -> Vec<Endpoint> {
    let (hosts, addrs, ports) = (
        config.get_hosts(),
        config.get_hostaddrs(),
        config.get_ports(),
    );
    let port = |i: usize| match ports {
        [] => 5432,
        [one] => *one,
        many => many.get(i).copied().unwrap_or(5432),
    };
    (0..hosts.len().max(addrs.len()))
        .filter_map(|i| {
            let name = match hosts.get(i) {
                Some(Host::Tcp(host)) => Some(host.clone()),
                _ => None,
            };
            let target = if let Some(addr) = addrs.get(i) {
                Target::Tcp {
                    host: addr.to_string(),
                    port: port(i),
                }
            } else {
                match hosts.get(i)? {
                    Host::Tcp(host) => Target::Tcp {
                        host: host.clone(),
                        port: port(i),
                    },
                    #[cfg(unix)]
                    Host::Unix(dir) => Target::Unix(dir.join(format!(".s.PGSQL.{}", port(i)))),
                }
            };
            let name = match (name, &target) {
                (Some(name), _) => name,
                (None, Target::Tcp { host, .. }) => host.clone(),
                #[cfg(unix)]
                (None, Target::Unix(_)) => String::new(),
            };
            Some(Endpoint {
                target: Arc::new(target),
                name,
            })
        })
        .collect()
}

/// What [`extract_tls`] took out of a connection string.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Extracted {
    /// The string for tokio-postgres to parse.
    pub(crate) rest: String,
    /// The `sslmode`, if the string gives one.
    pub(crate) ssl_mode: Option<SslMode>,
    /// The `sslrootcert`, if the string gives one.
    pub(crate) root_cert: Option<PathBuf>,
}

/// Takes out of a connection string (URL or `key=value` pairs) what tokio-postgres's parser
/// does not know: `sslrootcert`, and `sslmode=verify-ca` / `verify-full` (handed on as
/// `require`, so tokio-postgres still sees that TLS is wanted). Anything it cannot read is
/// handed on unchanged, for tokio-postgres to report.
pub(crate) fn extract_tls(s: &str) -> Extracted {
    let pairs = if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        url_pairs(s)
    } else {
        key_value_pairs(s)
    };
    let mut out = Extracted::default();
    let Some(pairs) = pairs else {
        out.rest = s.to_owned();
        return out;
    };
    // Replacements, in order of position.
    let mut edits: Vec<(Range<usize>, &str)> = Vec::new();
    for (key, value, span) in pairs {
        match key.as_str() {
            "sslmode" => {
                out.ssl_mode = SslMode::parse(&value);
                if matches!(out.ssl_mode, Some(SslMode::VerifyCa | SslMode::VerifyFull)) {
                    edits.push((span, "sslmode=require"));
                }
            }
            "sslrootcert" => {
                out.root_cert = Some(PathBuf::from(value));
                // Removed with one separator, so the query stays well-formed.
                let span = if s[span.end..].starts_with('&') {
                    span.start..span.end + 1
                } else if s[..span.start].ends_with('&') {
                    span.start - 1..span.end
                } else {
                    span
                };
                edits.push((span, ""));
            }
            _ => {}
        }
    }
    let mut at = 0;
    for (span, with) in edits {
        out.rest.push_str(&s[at..span.start]);
        out.rest.push_str(with);
        at = span.end;
    }
    out.rest.push_str(&s[at..]);
    if out.rest.ends_with('?') {
        out.rest.pop();
    }
    out
}

/// The query parameters of a URL: decoded key, decoded value, and the span of `key=value`.
fn url_pairs(s: &str) -> Option<Vec<(String, String, Range<usize>)>> {
    let Some(q) = s.find('?') else {
        return Some(Vec::new());
    };
    let mut pairs = Vec::new();
    let mut start = q + 1;
    while start < s.len() {
        let end = s[start..].find('&').map_or(s.len(), |i| start + i);
        let param = &s[start..end];
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        pairs.push((decode(key)?, decode(value)?, start..end));
        start = end + 1;
    }
    Some(pairs)
}

/// Percent-decoding of a URL component.
fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The `key=value` pairs of a libpq connection string (values optionally single-quoted,
/// with backslash escapes), each with its span.
fn key_value_pairs(s: &str) -> Option<Vec<(String, String, Range<usize>)>> {
    let mut chars = s.char_indices().peekable();
    let mut pairs = Vec::new();
    let skip_space = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_space(&mut chars);
        let Some(&(start, _)) = chars.peek() else {
            return Some(pairs);
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        skip_space(&mut chars);
        chars.next_if(|(_, c)| *c == '=')?;
        skip_space(&mut chars);
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match chars.next()? {
                    (_, '\'') => break,
                    (_, '\\') => value.push(chars.next()?.1),
                    (_, c) => value.push(c),
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                match c {
                    '\\' => value.push(chars.next()?.1),
                    c => value.push(c),
                }
            }
        }
        let end = chars.peek().map_or(s.len(), |&(i, _)| i);
        pairs.push((key, value, start..end));
    }
}

#[cfg(test)]
mod tests {
    use super::{endpoints, extract_tls, order, Endpoint, Extracted, Target};
    use crate::tls::SslMode;
    use std::sync::Arc;

    fn tcp(host: &str, port: u16) -> Endpoint {
        Endpoint {
            target: Arc::new(Target::Tcp {
                host: host.into(),
                port,
            }),
            name: host.into(),
        }
    }

    #[test]
    fn hosts_ports_and_addresses_are_read_as_libpq_reads_them() {
        let parse = |s: &str| endpoints(&s.parse().expect("a valid connection string"));
        assert_eq!(
            parse("postgres://u@db.example/x"),
            [tcp("db.example", 5432)]
        );
        assert_eq!(
            parse("host=a,b port=1,2 user=u"),
            [tcp("a", 1), tcp("b", 2)]
        );
        assert_eq!(parse("host=a,b port=7 user=u"), [tcp("a", 7), tcp("b", 7)]);
        // The address to connect to, the name to verify the certificate against.
        let mut named = tcp("127.0.0.1", 5432);
        named.name = "name".into();
        assert_eq!(parse("host=name hostaddr=127.0.0.1 user=u"), [named]);
        #[cfg(unix)]
        assert_eq!(
            parse("host=/run/postgresql port=5433 user=u"),
            [Endpoint {
                target: Arc::new(Target::Unix("/run/postgresql/.s.PGSQL.5433".into())),
                name: String::new(),
            }]
        );
        assert_eq!(parse("user=u"), []);
        assert_eq!(tcp("::1", 5432).target.to_string(), "[::1]:5432");
    }

    #[test]
    fn hosts_are_tried_in_order_or_shuffled() {
        assert_eq!(order(3, false), [0, 1, 2]);
        // Shuffled: every order of three turns up within a few hundred tries.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..600 {
            let o = order(3, true);
            let mut sorted = o.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2]);
            seen.insert(o);
        }
        assert_eq!(seen.len(), 6, "{seen:?}");
    }

    #[test]
    fn tls_settings_tokio_postgres_cannot_parse_are_taken_out() {
        let x = |rest: &str, mode, cert: Option<&str>| Extracted {
            rest: rest.into(),
            ssl_mode: mode,
            root_cert: cert.map(Into::into),
        };
        assert_eq!(
            extract_tls("postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Froot.pem"),
            x(
                "postgres://u@h/db?sslmode=require",
                Some(SslMode::VerifyFull),
                Some("/tmp/root.pem")
            )
        );
        assert_eq!(
            extract_tls(
                "postgres://u@h/db?sslrootcert=/r.pem&sslmode=verify-ca&application_name=a"
            ),
            x(
                "postgres://u@h/db?sslmode=require&application_name=a",
                Some(SslMode::VerifyCa),
                Some("/r.pem")
            )
        );
        assert_eq!(
            extract_tls("postgres://u@h/db?application_name=a&sslrootcert=/r.pem"),
            x("postgres://u@h/db?application_name=a", None, Some("/r.pem"))
        );
        assert_eq!(
            extract_tls("postgres://u@h/db?sslrootcert=/r.pem"),
            x("postgres://u@h/db", None, Some("/r.pem"))
        );
        assert_eq!(
            extract_tls("postgres://u@h/db?sslmode=require"),
            x(
                "postgres://u@h/db?sslmode=require",
                Some(SslMode::Require),
                None
            )
        );
        assert_eq!(
            extract_tls("host=h sslmode = verify-full sslrootcert='/my certs/r.pem' user=u"),
            x(
                "host=h sslmode=require  user=u",
                Some(SslMode::VerifyFull),
                Some("/my certs/r.pem")
            )
        );
        // Not understood: handed on as it is, for tokio-postgres to report.
        assert_eq!(
            extract_tls("host=h sslmode='verify-full"),
            x("host=h sslmode='verify-full", None, None)
        );
        assert_eq!(
            extract_tls("postgres://u@h/db?sslmode=sometimes"),
            x("postgres://u@h/db?sslmode=sometimes", None, None)
        );
    }
}
