//! What the manager needs from a runtime beyond [`pool_core::Runtime`]: sockets, from
//! `pool-net` (shared with the other managers), and the TCP options a tokio-postgres
//! `Config` asks for.

pub use pool_net::{Keepalive, NetRuntime as PgRuntime, Stream, TcpOptions};

/// The options a tokio-postgres `Config` asks for: keepalive when `keepalives` is on
/// (tokio-postgres's default, after 2 idle hours), with its idle time, interval and retries,
/// and `tcp_user_timeout`.
pub fn tcp_options(config: &tokio_postgres::Config) -> TcpOptions {
    let mut options = TcpOptions::default();
    options.keepalive = config.get_keepalives().then(|| {
        let mut keepalive = Keepalive::new(config.get_keepalives_idle());
        keepalive.interval = config.get_keepalives_interval();
        keepalive.retries = config.get_keepalives_retries();
        keepalive
    });
    options.user_timeout = config.get_tcp_user_timeout().copied();
    options
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::{tcp_options, Keepalive, TcpOptions};
    use std::time::Duration;

    #[test]
    fn tcp_options_are_read_from_the_config_and_reach_the_socket() {
        let parse = |s: &str| -> tokio_postgres::Config { s.parse().expect("a valid config") };
        let secs = Duration::from_secs;
        // tokio-postgres reads every one of these in seconds (libpq: tcp_user_timeout in ms).
        let options = tcp_options(&parse(
            "host=h keepalives_idle=30 keepalives_interval=5 keepalives_retries=4 tcp_user_timeout=7",
        ));
        let keepalive = options.keepalive.expect("keepalive on");
        assert_eq!(
            (keepalive.idle, keepalive.interval, keepalive.retries),
            (secs(30), Some(secs(5)), Some(4))
        );
        assert_eq!(options.user_timeout, Some(secs(7)));
        // tokio-postgres's defaults: keepalive on after two idle hours, the system's interval
        // and retries, no user timeout.
        let defaults = tcp_options(&parse("host=h"));
        assert_eq!(defaults.keepalive, Some(Keepalive::new(secs(2 * 60 * 60))));
        assert_eq!(defaults.user_timeout, None);
        assert_eq!(
            tcp_options(&parse("host=h keepalives=0 keepalives_idle=30")),
            TcpOptions::default()
        );

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a local port");
        let socket =
            std::net::TcpStream::connect(listener.local_addr().expect("bound")).expect("connects");
        options.apply(&socket).expect("the options apply");
        let read = socket2::SockRef::from(&socket);
        assert!(read.keepalive().expect("SO_KEEPALIVE"));
        assert_eq!(read.tcp_keepalive_time().expect("TCP_KEEPIDLE"), secs(30));
        assert_eq!(
            read.tcp_keepalive_interval().expect("TCP_KEEPINTVL"),
            secs(5)
        );
        assert_eq!(read.tcp_keepalive_retries().expect("TCP_KEEPCNT"), 4);
        assert_eq!(
            read.tcp_user_timeout().expect("TCP_USER_TIMEOUT"),
            Some(secs(7))
        );
        // Off: nothing is set.
        let other =
            std::net::TcpStream::connect(listener.local_addr().expect("bound")).expect("connects");
        TcpOptions::default()
            .apply(&other)
            .expect("nothing to apply");
        assert!(!socket2::SockRef::from(&other)
            .keepalive()
            .expect("SO_KEEPALIVE"));
    }
}
