//! What the pool tells the outside (`ARCHITECTURE.md`, "Observability"), on tokio: its
//! OpenTelemetry instruments as a Prometheus scrape shows them (the `metrics` feature,
//! through `pool-tokio`'s), the `pool.wait` span of an acquire that waits (and none for one
//! served at once), and the list of every event in `pool_core::observability` kept in step
//! with the source.

#[path = "support/tokio_runtime.rs"]
mod tokio_runtime;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_runtime::block_on;
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// A manager of numbered connections that open at once, whose checkout check takes
/// `check_takes`.
#[derive(Default)]
struct Numbers {
    opened: AtomicUsize,
    check_takes: Duration,
}

impl pool_tokio::Manager for Numbers {
    type Connection = usize;
    type Error = std::io::Error;
    async fn connect(&self) -> Result<usize, std::io::Error> {
        Ok(self.opened.fetch_add(1, SeqCst) + 1)
    }
    async fn check(&self, _: &mut usize) -> Result<(), std::io::Error> {
        if !self.check_takes.is_zero() {
            tokio::time::sleep(self.check_takes).await;
        }
        Ok(())
    }
}

type NumberPool = pool_tokio::Pool<Numbers>;

/// Waits until `done` holds, polling every 2 ms; fails loudly after 5 s (a bound, not a
/// measurement).
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < give_up, "{what} did not happen within 5 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A Prometheus recorder of this test's own (not installed globally) and a pool built with
/// it, so its instruments are registered there.
fn pool_with_recorder(
    name: &str,
    configure: impl FnOnce(pool_tokio::Builder<Numbers>) -> pool_tokio::Builder<Numbers>,
) -> (NumberPool, PrometheusHandle) {
    pool_of_with_recorder(Numbers::default(), name, configure)
}

/// [`pool_with_recorder`] with a manager of the caller's.
fn pool_of_with_recorder(
    manager: Numbers,
    name: &str,
    configure: impl FnOnce(pool_tokio::Builder<Numbers>) -> pool_tokio::Builder<Numbers>,
) -> (NumberPool, PrometheusHandle) {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.01, 0.1, 1.0, 10.0])
        .expect("valid buckets")
        .build_recorder();
    let handle = recorder.handle();
    let builder = configure(NumberPool::builder(manager).name(name));
    let pool = metrics::with_local_recorder(&recorder, || builder.build()).expect("a valid pool");
    (pool, handle)
}

/// The value of the sample `name` whose labels include every one of `labels`, from a
/// Prometheus text scrape.
fn sample(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (labels_text, value) = match rest.strip_prefix('{') {
            Some(rest) => rest.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        let found: BTreeMap<&str, &str> = labels_text
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        labels
            .iter()
            .all(|(k, v)| found.get(k) == Some(v))
            .then(|| value.trim().parse().expect("a number"))
    })
}

/// The Prometheus scrape of a pool's instruments: names as the exporter prints them (dots as
/// underscores), labelled with the pool's name, with the values the pool's own status and
/// counters give, a time-out included.
#[test]
fn a_prometheus_scrape_shows_the_pools_instruments_under_its_name() {
    block_on(async {
        let (pool, handle) = pool_with_recorder("orders", |b| {
            b.max_size(2)
                .min_idle(1)
                .check_on_checkout(false)
                .acquire_timeout(Some(Duration::from_secs(5)))
        });
        let orders = [("db_client_connection_pool_name", "orders")];
        let idle = [orders[0], ("db_client_connection_state", "idle")];
        let used = [orders[0], ("db_client_connection_state", "used")];

        // Before any acquire: the series exist, at what the configuration says.
        let scrape = handle.render();
        assert_eq!(
            sample(&scrape, "db_client_connection_max", &orders),
            Some(2.0),
            "{scrape}"
        );
        assert_eq!(
            sample(&scrape, "db_client_connection_idle_max", &orders),
            Some(2.0)
        );
        assert_eq!(
            sample(&scrape, "db_client_connection_idle_min", &orders),
            Some(1.0)
        );
        assert_eq!(
            sample(&scrape, "db_client_connection_timeouts", &orders),
            Some(0.0)
        );

        // Both connections in use, a third acquire waiting, then timing out.
        let a = pool.get().await.expect("a first connection");
        let b = pool.get().await.expect("a second connection");
        let waiter = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.get_timeout(Duration::from_millis(150))
                    .await
                    .map(|c| *c)
            })
        };
        wait_until("the third acquire queueing", || pool.status().waiting == 1).await;
        let scrape = handle.render();
        assert_eq!(
            sample(&scrape, "db_client_connection_pending_requests", &orders),
            Some(1.0),
            "{scrape}"
        );
        assert_eq!(
            sample(&scrape, "db_client_connection_count", &used),
            Some(2.0),
            "{scrape}"
        );
        assert_eq!(
            sample(&scrape, "db_client_connection_count", &idle),
            Some(0.0),
            "{scrape}"
        );
        let timed_out = waiter.await.expect("no panic");
        assert!(
            timed_out.is_err_and(|e| e.is_timeout()),
            "the third acquire times out"
        );

        // One back (into the return lane or the machine), then cycles through it.
        drop(a);
        for _ in 0..10 {
            drop(pool.get().await.expect("the idle connection"));
        }
        drop(b);
        wait_until("every connection back", || pool.status().in_use == 0).await;

        let status = pool.status();
        let m = pool.metrics();
        let scrape = handle.render();
        println!("{scrape}");
        assert_eq!(
            sample(&scrape, "db_client_connection_count", &idle),
            Some(status.idle as f64),
            "{scrape}"
        );
        assert_eq!(
            sample(&scrape, "db_client_connection_count", &used),
            Some(0.0),
            "{scrape}"
        );
        assert_eq!(
            sample(&scrape, "db_client_connection_pending_requests", &orders),
            Some(0.0)
        );
        assert_eq!(
            sample(&scrape, "db_client_connection_timeouts", &orders),
            Some(1.0),
            "{scrape}"
        );
        // Every served acquire has a wait, every give-back a use, every connect a creation.
        assert_eq!(
            sample(&scrape, "db_client_connection_wait_time_count", &orders),
            Some(m.acquired as f64),
            "{scrape}"
        );
        assert_eq!(
            sample(&scrape, "db_client_connection_use_time_count", &orders),
            Some(m.acquired as f64),
            "{scrape}"
        );
        assert_eq!(
            sample(&scrape, "db_client_connection_create_time_count", &orders),
            Some(m.connects_ok as f64),
            "{scrape}"
        );
        assert_eq!(m.acquired, 12);
        assert_eq!(m.timed_out, 1);
        // Histograms in seconds, with the buckets the recorder was given.
        let fast = sample(
            &scrape,
            "db_client_connection_wait_time_bucket",
            &[orders[0], ("le", "10")],
        );
        assert_eq!(fast, Some(12.0), "no wait reached 10 s: {scrape}");
        let sum =
            sample(&scrape, "db_client_connection_use_time_sum", &orders).expect("a use-time sum");
        assert!(sum > 0.0 && sum < 60.0, "{sum} s in use in all");
        // The pool's name, in its Debug too.
        assert_eq!(pool.name(), "orders");
        assert!(format!("{pool:?}").contains("orders"), "{pool:?}");
    });
}

/// The use time runs from the lend to the give-back: a checkout check before the lend is
/// part of the acquire's wait, not of the borrower's use.
#[test]
fn the_use_time_starts_when_the_checkout_check_has_passed() {
    block_on(async {
        let check_takes = Duration::from_millis(200);
        let manager = Numbers {
            check_takes,
            ..Numbers::default()
        };
        // A zero bypass window: every acquire runs the check.
        let (pool, handle) = pool_of_with_recorder(manager, "checked", |b| {
            b.check_on_checkout(true).check_bypass(Duration::ZERO)
        });
        for _ in 0..3 {
            drop(pool.get().await.expect("a checked connection"));
        }
        let scrape = handle.render();
        let labels = [("db_client_connection_pool_name", "checked")];
        let count = |name| sample(&scrape, name, &labels);
        assert_eq!(
            count("db_client_connection_use_time_count"),
            Some(3.0),
            "{scrape}"
        );
        let used = count("db_client_connection_use_time_sum").expect("a use-time sum");
        let waited = count("db_client_connection_wait_time_sum").expect("a wait-time sum");
        let checks = 3.0 * check_takes.as_secs_f64();
        assert!(
            waited >= checks,
            "the three checks are in the waits: {waited} s waited in all"
        );
        assert!(
            used < check_takes.as_secs_f64(),
            "the checks are not in the uses: {used} s in use in all, each lend released at once"
        );
    });
}

/// Two pools of one process have series of their own; one with its metrics off has none.
#[test]
fn pools_are_told_apart_by_name_and_a_pool_can_opt_out() {
    block_on(async {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let (first, _second, silent) = metrics::with_local_recorder(&recorder, || {
            let build = |b: pool_tokio::Builder<Numbers>| b.build().expect("a valid pool");
            (
                build(
                    NumberPool::builder(Numbers::default())
                        .name("first")
                        .max_size(3),
                ),
                build(
                    NumberPool::builder(Numbers::default())
                        .name("second")
                        .max_size(5),
                ),
                build(
                    NumberPool::builder(Numbers::default())
                        .name("silent")
                        .metrics(false),
                ),
            )
        });
        let held = first.get().await.expect("a connection");
        drop(silent.get().await.expect("a connection"));
        let scrape = handle.render();
        let first_label = [("db_client_connection_pool_name", "first")];
        let second_label = [("db_client_connection_pool_name", "second")];
        assert_eq!(
            sample(&scrape, "db_client_connection_max", &first_label),
            Some(3.0),
            "{scrape}"
        );
        assert_eq!(
            sample(&scrape, "db_client_connection_max", &second_label),
            Some(5.0),
            "{scrape}"
        );
        assert_eq!(
            sample(
                &scrape,
                "db_client_connection_count",
                &[first_label[0], ("db_client_connection_state", "used")]
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &scrape,
                "db_client_connection_count",
                &[second_label[0], ("db_client_connection_state", "used")]
            ),
            Some(0.0)
        );
        assert!(!scrape.contains("silent"), "{scrape}");
        drop(held);
        // Unnamed pools are numbered.
        let unnamed = NumberPool::builder(Numbers::default())
            .build()
            .expect("a valid pool");
        let n = unnamed.name().strip_prefix("pool-").expect("pool-N");
        assert!(n.parse::<u64>().is_ok(), "{}", unnamed.name());
    });
}

/// A span as the capturing layer saw it.
#[derive(Debug, Clone, Default)]
struct Captured {
    name: &'static str,
    fields: BTreeMap<String, String>,
    closed: bool,
}

/// Keeps every span of every test of this binary (each test filters by its pool's name), in
/// the order they were opened (the subscriber reuses the ids of closed spans).
#[derive(Default)]
struct Capture {
    spans: Mutex<Spans>,
}

#[derive(Default)]
struct Spans {
    /// By opening order.
    all: BTreeMap<u64, Captured>,
    /// The opening order of each open span, by id.
    open: BTreeMap<u64, u64>,
    opened: u64,
}

impl Spans {
    fn get(&mut self, id: &Id) -> Option<&mut Captured> {
        let seq = self.open.get(&id.into_u64())?;
        self.all.get_mut(seq)
    }
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
}

struct CaptureLayer(Arc<Capture>);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for CaptureLayer {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut span = Captured {
            name: attrs.metadata().name(),
            ..Captured::default()
        };
        attrs.record(&mut Fields(&mut span.fields));
        let mut spans = self.0.spans.lock().expect("not poisoned");
        spans.opened += 1;
        let seq = spans.opened;
        spans.open.insert(id.into_u64(), seq);
        spans.all.insert(seq, span);
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        if let Some(span) = self.0.spans.lock().expect("not poisoned").get(id) {
            values.record(&mut Fields(&mut span.fields));
        }
    }
    fn on_close(&self, id: Id, _: Context<'_, S>) {
        let mut spans = self.0.spans.lock().expect("not poisoned");
        if let Some(span) = spans.get(&id) {
            span.closed = true;
        }
        spans.open.remove(&id.into_u64());
    }
}

/// The process-wide capturing subscriber (spans are opened on the runtime's threads too).
fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<Arc<Capture>> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = Arc::new(Capture::default());
        let subscriber = tracing_subscriber::registry().with(CaptureLayer(Arc::clone(&capture)));
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        capture
    })
}

/// The `pool.wait` spans of the pool named `pool`, in the order they were opened.
fn wait_spans(pool: &str) -> Vec<Captured> {
    capture()
        .spans
        .lock()
        .expect("not poisoned")
        .all
        .values()
        .filter(|s| s.name == "pool.wait" && s.fields.get("pool").map(String::as_str) == Some(pool))
        .cloned()
        .collect()
}

fn waited_ms(span: &Captured) -> f64 {
    span.fields["waited_ms"].parse().expect("a float")
}

/// An acquire that waits opens one `pool.wait` span with the pool's name, its outcome and
/// how long it waited; one served at once opens none.
#[test]
fn an_acquire_that_waits_has_a_span_and_one_served_at_once_has_none() {
    capture();
    block_on(async {
        let pool = NumberPool::builder(Numbers::default())
            .name("spans")
            .max_size(1)
            .check_on_checkout(false)
            .build()
            .expect("a valid pool");
        // The first acquire waits for the first connect.
        pool.ready().await.expect("a connection opens");
        let spans = wait_spans("spans");
        assert_eq!(spans.len(), 1, "{spans:?}");
        assert_eq!(spans[0].fields["outcome"], "acquired");
        assert!(spans[0].closed);

        // Served at once, from the idle connection: no span.
        for _ in 0..5 {
            drop(pool.get().await.expect("the idle connection"));
        }
        drop(pool.try_get().expect("the idle connection"));
        assert_eq!(
            wait_spans("spans").len(),
            1,
            "an acquire served at once opened a span"
        );

        // Held by another task: one waiter times out, one is dropped while waiting, one is
        // served when the connection comes back.
        let (held_tx, held_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let holder = {
            let pool = pool.clone();
            tokio::spawn(async move {
                let conn = pool.get().await.expect("the connection");
                held_tx.send(()).expect("the test waits");
                release_rx.await.expect("the test releases it");
                drop(conn);
            })
        };
        held_rx.await.expect("held");
        let err = pool
            .get_timeout(Duration::from_millis(60))
            .await
            .expect_err("exhausted");
        assert!(err.is_timeout(), "{err}");
        let cancelled = tokio::time::timeout(Duration::from_millis(20), pool.get()).await;
        assert!(cancelled.is_err(), "still held");
        let served = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.get().await.map(|c| *c) })
        };
        wait_until("the last acquire queueing", || pool.status().waiting == 1).await;
        release_tx.send(()).expect("the holder waits");
        holder.await.expect("no panic");
        assert!(served.await.expect("no panic").is_ok());

        let spans = wait_spans("spans");
        let outcomes: Vec<&str> = spans.iter().map(|s| s.fields["outcome"].as_str()).collect();
        assert_eq!(
            outcomes,
            ["acquired", "timed_out", "cancelled", "acquired"],
            "{spans:?}"
        );
        assert!(spans.iter().all(|s| s.closed), "{spans:?}");
        assert!(waited_ms(&spans[1]) >= 60.0, "{spans:?}");
        // Dropped by a 20 ms time-out started just before it queued.
        assert!(waited_ms(&spans[2]) >= 15.0, "{spans:?}");
        assert!(waited_ms(&spans[3]) >= 0.0, "{spans:?}");
    });
}

/// `pool_core::observability` lists, per crate, as many events of each level as the crate's
/// source emits: an event added without its line there fails here.
#[test]
fn every_event_in_the_source_is_listed_in_the_docs() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let docs =
        std::fs::read_to_string(root.join("pool-core/src/observability.rs")).expect("the docs");
    let mut listed: BTreeMap<(String, String), usize> = BTreeMap::new();
    for line in docs.lines() {
        let cells: Vec<&str> = line
            .trim_start_matches("//!")
            .split('|')
            .map(str::trim)
            .collect();
        if cells.len() > 3 && cells[1].starts_with("pool-") {
            *listed
                .entry((cells[1].to_owned(), cells[2].to_lowercase()))
                .or_default() += 1;
        }
    }
    let mut emitted: BTreeMap<(String, String), usize> = BTreeMap::new();
    for krate in [
        "pool-core",
        "pool-tokio",
        "pool-async-std",
        "pool-smol",
        "pool-net",
        "pool-postgres",
        "pool-redis",
    ] {
        let mut dirs = vec![root.join(krate).join("src")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("a source folder") {
                let path = entry.expect("an entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let source = std::fs::read_to_string(&path).expect("a source file");
                    for level in ["trace", "debug", "info", "warn", "error"] {
                        let n = source.matches(&format!("tracing::{level}!(")).count();
                        if n > 0 {
                            *emitted
                                .entry((krate.to_owned(), level.to_owned()))
                                .or_default() += n;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(
        listed, emitted,
        "the events listed in pool_core::observability, against the source"
    );
    assert!(emitted.values().sum::<usize>() >= 20, "{emitted:?}");
}
