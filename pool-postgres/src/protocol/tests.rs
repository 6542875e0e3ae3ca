//! The model on transcripts built message by message the way tokio-postgres and a
//! PostgreSQL 15 server write them (the database suite checks it against a live server).

use super::{BackendKey, Due, Tracker, TransactionStatus, Verdict};

/// One side's bytes, in the order the socket passed them.
#[derive(Debug, Clone)]
enum Chunk {
    Client(Vec<u8>),
    Server(Vec<u8>),
}
use Chunk::{Client, Server};

fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn cstr(s: &str) -> Vec<u8> {
    let mut out = s.as_bytes().to_vec();
    out.push(0);
    out
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

// Client messages.
fn startup() -> Vec<u8> {
    let mut body = 196_608_u32.to_be_bytes().to_vec();
    body.extend(cstr("user"));
    body.extend(cstr("postgres"));
    body.push(0);
    let mut out = (body.len() as u32 + 4).to_be_bytes().to_vec();
    out.extend(body);
    out
}
fn ssl_request() -> Vec<u8> {
    let mut out = 8_u32.to_be_bytes().to_vec();
    out.extend(80_877_103_u32.to_be_bytes());
    out
}
fn query(sql: &str) -> Vec<u8> {
    msg(b'Q', &cstr(sql))
}
fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = cstr(name);
    body.extend(cstr(sql));
    body.extend([0, 0]);
    msg(b'P', &body)
}
fn bind(statement: &str) -> Vec<u8> {
    let mut body = cstr("");
    body.extend(cstr(statement));
    body.extend([0, 0, 0, 0, 0, 1, 0, 1]);
    msg(b'B', &body)
}
fn describe(name: &str) -> Vec<u8> {
    let mut body = vec![b'S'];
    body.extend(cstr(name));
    msg(b'D', &body)
}
fn execute() -> Vec<u8> {
    msg(b'E', &[0, 0, 0, 0, 0])
}
fn sync() -> Vec<u8> {
    msg(b'S', &[])
}
fn close(name: &str) -> Vec<u8> {
    let mut body = vec![b'S'];
    body.extend(cstr(name));
    msg(b'C', &body)
}
fn copy_data(data: &[u8]) -> Vec<u8> {
    msg(b'd', data)
}
fn copy_done() -> Vec<u8> {
    msg(b'c', &[])
}
fn copy_fail() -> Vec<u8> {
    msg(b'f', &cstr("COPY from stdin failed"))
}

// Server messages.
fn handshake_reply() -> Vec<u8> {
    let mut key = 4242_i32.to_be_bytes().to_vec();
    key.extend((-7_i32).to_be_bytes());
    let mut param = cstr("server_version");
    param.extend(cstr("15.0"));
    cat(&[
        msg(b'R', &0_u32.to_be_bytes()),
        msg(b'S', &param),
        msg(b'K', &key),
        rfq(b'I'),
    ])
}
fn rfq(status: u8) -> Vec<u8> {
    msg(b'Z', &[status])
}
fn complete(tag: &str) -> Vec<u8> {
    msg(b'C', &cstr(tag))
}
fn error() -> Vec<u8> {
    let mut body = b"SERROR\0C22012\0Mdivision by zero\0".to_vec();
    body.push(0);
    msg(b'E', &body)
}
fn notice() -> Vec<u8> {
    let mut body = b"SNOTICE\0C00000\0Mhello\0".to_vec();
    body.push(0);
    msg(b'N', &body)
}
fn notification(channel: &str) -> Vec<u8> {
    let mut body = 99_i32.to_be_bytes().to_vec();
    body.extend(cstr(channel));
    body.extend(cstr("payload"));
    msg(b'A', &body)
}
fn row() -> Vec<u8> {
    cat(&[
        msg(
            b'T',
            &[
                0, 1, b'x', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 23, 0, 4, 255, 255, 255, 255, 0, 0,
            ],
        ),
        msg(b'D', &[0, 1, 0, 0, 0, 1, b'1']),
    ])
}
fn copy_in_response() -> Vec<u8> {
    msg(b'G', &[0, 0, 0])
}
fn copy_out_response() -> Vec<u8> {
    msg(b'H', &[0, 0, 0])
}

/// A tracker past the handshake.
fn connected() -> Tracker {
    let mut t = Tracker::new();
    t.client(&startup());
    t.server(&handshake_reply());
    t
}

/// Feeds `chunks` whole, returning the verdict after each.
fn run(chunks: &[Chunk]) -> Vec<Verdict> {
    run_split(chunks, usize::MAX)
}

/// Feeds `chunks` cut in pieces of at most `size` bytes.
fn run_split(chunks: &[Chunk], size: usize) -> Vec<Verdict> {
    let mut t = connected();
    chunks
        .iter()
        .map(|chunk| {
            let (bytes, client) = match chunk {
                Client(b) => (b, true),
                Server(b) => (b, false),
            };
            for piece in bytes.chunks(size.max(1)) {
                if client {
                    t.client(piece);
                } else {
                    t.server(piece);
                }
            }
            t.verdict()
        })
        .collect()
}

fn due(verdicts: &[Verdict]) -> Vec<Due> {
    verdicts.iter().map(|v| v.due).collect()
}

/// Every verdict is the same whatever the chunk boundaries.
fn same_at_any_split(chunks: &[Chunk]) {
    let whole = run(chunks);
    for size in [1, 2, 3, 5, 7, 64] {
        assert_eq!(run_split(chunks, size), whole, "pieces of {size} bytes");
    }
}

#[test]
fn the_handshake_gives_the_key_and_ends_idle() {
    let mut t = Tracker::new();
    assert!(!t.verdict().ready);
    t.client(&startup());
    t.server(&handshake_reply()[..10]);
    assert!(!t.verdict().may_lend());
    t.server(&handshake_reply()[10..]);
    let v = t.verdict();
    assert!(
        v.ready && v.may_lend() && v.quiet() && !v.query_may_run(),
        "{v:?}"
    );
    assert_eq!(
        t.backend_key(),
        Some(BackendKey {
            pid: 4242,
            secret: -7
        })
    );
    assert_eq!(t.sent(), 0);
}

#[test]
fn an_ssl_request_refused_goes_on_in_the_clear() {
    let mut t = Tracker::new();
    t.client(&ssl_request());
    t.server(b"N");
    t.client(&startup());
    t.server(&handshake_reply());
    assert!(t.verdict().may_lend());
    let mut t = Tracker::new();
    t.client(&ssl_request());
    t.server(b"S");
    assert!(t.verdict().lost, "encrypted: the model cannot follow");
}

#[test]
fn a_simple_query_is_due_until_its_ready_for_query() {
    let chunks = [
        Client(query("begin; select 1")),
        Server(cat(&[complete("BEGIN"), row(), complete("SELECT 1")])),
        Server(rfq(b'T')),
        Client(query("commit")),
        Server(cat(&[complete("COMMIT"), rfq(b'I')])),
    ];
    let v = run(&chunks);
    assert_eq!(
        due(&v),
        [
            Due::Query,
            Due::Query,
            Due::Nothing,
            Due::Query,
            Due::Nothing
        ]
    );
    assert_eq!(v[2].status, TransactionStatus::InTransaction);
    assert!(!v[2].may_lend());
    assert!(v[4].may_lend());
    same_at_any_split(&chunks);
}

#[test]
fn a_multi_statement_query_and_an_empty_query_earn_one_reply_each() {
    let chunks = [
        Client(query("select 1; select 1/0; select 2")),
        Server(cat(&[row(), complete("SELECT 1"), error(), rfq(b'I')])),
        Client(query("")),
        Server(cat(&[msg(b'I', &[]), rfq(b'I')])),
    ];
    assert_eq!(
        due(&run(&chunks)),
        [Due::Query, Due::Nothing, Due::Query, Due::Nothing]
    );
    same_at_any_split(&chunks);
}

#[test]
fn copy_in_finished_ignores_the_sync_written_during_the_copy() {
    // tokio-postgres: Bind, Execute, Sync; then the data; then CopyDone, Sync.
    let chunks = [
        Client(cat(&[bind("s1"), execute(), sync()])),
        Server(cat(&[msg(b'2', &[]), copy_in_response()])),
        Client(copy_data(b"1\n2\n")),
        Client(cat(&[copy_done(), sync()])),
        Server(cat(&[complete("COPY 2"), rfq(b'I')])),
    ];
    let v = run(&chunks);
    assert_eq!(
        due(&v),
        [Due::Query, Due::Query, Due::Query, Due::Query, Due::Nothing]
    );
    assert!(v[4].may_lend(), "{:?}", v[4]);
    same_at_any_split(&chunks);
}

#[test]
fn copy_in_failed_by_the_client_ends_with_one_reply() {
    let chunks = [
        Client(cat(&[bind("s1"), execute(), sync()])),
        Server(cat(&[msg(b'2', &[]), copy_in_response()])),
        Client(copy_data(b"1\n")),
        Client(cat(&[copy_fail(), sync()])),
        Server(cat(&[error(), rfq(b'I')])),
    ];
    let v = run(&chunks);
    assert_eq!(v[4].due, Due::Nothing);
    assert!(v[4].may_lend());
    same_at_any_split(&chunks);
}

#[test]
fn copy_in_inside_a_transaction_keeps_the_status() {
    let chunks = [
        Client(query("begin")),
        Server(cat(&[complete("BEGIN"), rfq(b'T')])),
        Client(cat(&[bind("s1"), execute(), sync()])),
        Server(cat(&[msg(b'2', &[]), copy_in_response()])),
        Client(cat(&[copy_data(b"1\n"), copy_done(), sync()])),
        Server(cat(&[complete("COPY 1"), rfq(b'T')])),
    ];
    let v = run(&chunks);
    assert_eq!(v[5].due, Due::Nothing);
    assert_eq!(v[5].status, TransactionStatus::InTransaction);
    same_at_any_split(&chunks);
}

#[test]
fn copy_in_that_fails_before_starting_leaves_only_a_sync_due() {
    // The COPY statement fails at Execute (no such table): no CopyInResponse, the server
    // answers the first Sync, then drops the CopyFail and answers the second.
    let chunks = [
        Client(cat(&[bind("s1"), execute(), sync()])),
        Server(cat(&[error(), rfq(b'I')])),
        Client(cat(&[copy_fail(), sync()])),
        Server(rfq(b'I')),
    ];
    let v = run(&chunks);
    assert_eq!(due(&v), [Due::Query, Due::Nothing, Due::Sync, Due::Nothing]);
    assert!(!v[2].query_may_run(), "nothing to cancel");
    same_at_any_split(&chunks);
}

#[test]
fn copy_in_written_before_the_server_answers() {
    // A client that writes the data without waiting for CopyInResponse.
    let chunks = [
        Client(cat(&[
            bind("s1"),
            execute(),
            sync(),
            copy_data(b"1\n"),
            copy_done(),
            sync(),
        ])),
        Server(cat(&[
            msg(b'2', &[]),
            copy_in_response(),
            complete("COPY 1"),
            rfq(b'I'),
        ])),
    ];
    assert_eq!(due(&run(&chunks)), [Due::Query, Due::Nothing]);
    same_at_any_split(&chunks);
}

#[test]
fn copy_in_from_a_simple_query() {
    let chunks = [
        Client(query("copy t from stdin")),
        Server(copy_in_response()),
        Client(cat(&[copy_data(b"1\n"), copy_done()])),
        Server(cat(&[complete("COPY 1"), rfq(b'I')])),
    ];
    assert_eq!(
        due(&run(&chunks)),
        [Due::Query, Due::Query, Due::Query, Due::Nothing]
    );
    same_at_any_split(&chunks);
}

#[test]
fn copy_out_needs_nothing_special() {
    let chunks = [
        Client(cat(&[bind("s1"), execute(), sync()])),
        Server(cat(&[
            msg(b'2', &[]),
            copy_out_response(),
            copy_data(b"1\n"),
        ])),
        Server(cat(&[
            copy_data(b"2\n"),
            msg(b'c', &[]),
            complete("COPY 2"),
            rfq(b'I'),
        ])),
    ];
    assert_eq!(due(&run(&chunks)), [Due::Query, Due::Query, Due::Nothing]);
    same_at_any_split(&chunks);
}

#[test]
fn pipelined_queries_and_an_error_in_the_middle() {
    // Three extended queries written at once; the second fails, the server skips to its
    // Sync and goes on with the third.
    let unit = || cat(&[bind("s1"), execute(), sync()]);
    let chunks = [
        Client(cat(&[unit(), unit(), unit()])),
        Server(cat(&[
            msg(b'2', &[]),
            row(),
            complete("SELECT 1"),
            rfq(b'I'),
        ])),
        Server(cat(&[msg(b'2', &[]), error(), rfq(b'I')])),
        Server(cat(&[msg(b'2', &[]), row(), complete("SELECT 1")])),
        Server(rfq(b'I')),
    ];
    assert_eq!(
        due(&run(&chunks)),
        [Due::Query, Due::Query, Due::Query, Due::Query, Due::Nothing]
    );
    same_at_any_split(&chunks);
}

#[test]
fn a_failed_statement_in_a_transaction_is_a_failed_transaction() {
    let chunks = [
        Client(query("begin; select 1/0")),
        Server(cat(&[complete("BEGIN"), error(), rfq(b'E')])),
    ];
    let v = run(&chunks);
    assert_eq!(v[1].status, TransactionStatus::Failed);
    assert!(!v[1].may_lend());
}

#[test]
fn a_prepared_statement_and_its_close() {
    // query(&str): Parse, Describe, Sync; Bind, Execute, Sync; the Statement drops: Close,
    // Sync.
    let chunks = [
        Client(cat(&[
            parse("s1", "select $1::int4"),
            describe("s1"),
            sync(),
        ])),
        Server(cat(&[
            msg(b'1', &[]),
            msg(b't', &[0, 1, 0, 0, 0, 23]),
            msg(b'n', &[]),
        ])),
        Server(rfq(b'I')),
        Client(cat(&[bind("s1"), execute(), sync()])),
        Server(cat(&[
            msg(b'2', &[]),
            row(),
            complete("SELECT 1"),
            rfq(b'I'),
        ])),
        Client(cat(&[close("s1"), sync()])),
        Server(cat(&[msg(b'3', &[]), rfq(b'I')])),
    ];
    let v = run(&chunks);
    assert_eq!(
        due(&v),
        [
            Due::Query,
            Due::Query,
            Due::Nothing,
            Due::Query,
            Due::Nothing,
            Due::Sync,
            Due::Nothing
        ]
    );
    // Only the Close is due: nothing runs, nothing to cancel, the session may be lent.
    assert!(v[5].may_lend() && !v[5].query_may_run(), "{:?}", v[5]);
    same_at_any_split(&chunks);
}

#[test]
fn a_close_due_behind_a_query_still_counts_the_query() {
    let chunks = [
        Client(cat(&[bind("s1"), execute(), sync(), close("s1"), sync()])),
        Server(cat(&[msg(b'2', &[])])),
    ];
    let v = run(&chunks);
    assert!(v[1].query_may_run() && !v[1].may_lend());
}

#[test]
fn a_close_due_inside_a_transaction_is_not_lent() {
    let chunks = [
        Client(query("begin")),
        Server(cat(&[complete("BEGIN"), rfq(b'T')])),
        Client(cat(&[close("s1"), sync()])),
    ];
    let v = run(&chunks);
    assert_eq!(v[2].due, Due::Sync);
    assert!(!v[2].may_lend());
}

#[test]
fn notices_and_notifications_change_nothing_but_the_listen_count() {
    let mut t = connected();
    t.client(&query("LISTEN pool_channel"));
    assert_eq!(t.listens(), 1);
    t.server(&cat(&[complete("LISTEN"), rfq(b'I')]));
    t.server(&notice());
    t.server(&notification("pool_channel"));
    assert_eq!(t.listens(), 2);
    let v = t.verdict();
    assert!(v.may_lend() && v.quiet(), "{v:?}");
    // A query without the word leaves the count alone; the word split across writes counts.
    t.client(&query("select 1"));
    t.server(&cat(&[row(), complete("SELECT 1"), rfq(b'I')]));
    assert_eq!(t.listens(), 2);
    let listen = parse("", "select 1; lIsTeN other");
    let (a, b) = listen.split_at(listen.len() - 8);
    t.client(a);
    t.client(b);
    assert_eq!(t.listens(), 3);
    // A Bind carries no SQL, whatever its bytes say.
    t.client(&msg(b'B', b"listen\0listen\0\0\0\0\0\0\0"));
    assert_eq!(t.listens(), 3);
}

#[test]
fn nonsense_loses_the_model() {
    let mut t = connected();
    t.server(&[b'Z', 0, 0, 0, 2]);
    assert!(t.verdict().lost && !t.verdict().may_lend());
    let mut t = connected();
    t.server(&rfq(b'I'));
    assert!(t.verdict().lost, "a ReadyForQuery nobody asked for");
    let mut t = connected();
    t.client(&query("select 1"));
    t.server(&rfq(b'x'));
    assert!(t.verdict().lost, "no such status");
}

mod props {
    use proptest::prelude::*;

    use super::*;

    /// One request and the server's complete answer to it.
    fn exchange(kind: u8) -> (Vec<u8>, Vec<u8>) {
        let unit = || cat(&[bind("s1"), execute(), sync()]);
        match kind % 6 {
            0 => (
                query("select 1"),
                cat(&[row(), complete("SELECT 1"), rfq(b'I')]),
            ),
            1 => (
                unit(),
                cat(&[msg(b'2', &[]), row(), complete("SELECT 1"), rfq(b'I')]),
            ),
            2 => (
                cat(&[close("s1"), sync()]),
                cat(&[msg(b'3', &[]), rfq(b'I')]),
            ),
            3 => (unit(), cat(&[msg(b'2', &[]), error(), rfq(b'I')])),
            4 => (
                cat(&[unit(), copy_data(b"1\n"), copy_done(), sync()]),
                cat(&[
                    msg(b'2', &[]),
                    copy_in_response(),
                    complete("COPY 1"),
                    rfq(b'I'),
                ]),
            ),
            _ => (
                unit(),
                cat(&[
                    msg(b'2', &[]),
                    copy_out_response(),
                    copy_data(b"1\n"),
                    msg(b'c', &[]),
                    complete("COPY 1"),
                    rfq(b'I'),
                ]),
            ),
        }
    }

    proptest! {
        /// Any pipeline of requests, written in any pieces and answered in any pieces
        /// (never before it was asked), ends with nothing due, idle, in step; and while
        /// some answer is missing, something is due.
        #[test]
        fn any_pipeline_at_any_split_ends_quiet(
            kinds in proptest::collection::vec(any::<u8>(), 1..8),
            cuts in proptest::collection::vec(1_usize..40, 1..8),
        ) {
            let mut t = connected();
            let (requests, replies): (Vec<_>, Vec<_>) = kinds.iter().map(|&k| exchange(k)).unzip();
            let requests = requests.concat();
            let replies = replies.concat();
            t.client(&requests);
            let mut fed = 0;
            let mut cut = cuts.iter().cycle();
            while fed < replies.len() {
                prop_assert!(!t.verdict().quiet(), "something is due");
                let n = (*cut.next().unwrap_or(&1)).min(replies.len() - fed);
                t.server(&replies[fed..fed + n]);
                fed += n;
            }
            let v = t.verdict();
            prop_assert!(v.quiet() && v.may_lend() && !v.lost, "{:?}", v);
        }
    }
}

/// Transcripts recorded from a PostgreSQL 15 server by the database suite
/// (`recorded_transcripts_replay_to_the_live_verdict` with `POOL_TEST_RECORD_TRANSCRIPTS`):
/// per chunk, `C` or `S`, a big-endian `u32` length, the bytes. Each is one session from its
/// startup message: a temporary table, then the suite's scenarios up to the one it is named
/// after (`session.bin` has them all: COPY in finished and given up, COPY out, pipelined
/// queries, an error mid-pipeline, a notice and a notification, a prepared statement and its
/// Close, multi-statement and empty queries, a transaction, a failed one, a rollback).
mod recorded {
    use super::*;

    fn chunks(mut bytes: &[u8]) -> Vec<Chunk> {
        let mut out = Vec::new();
        while let [side, a, b, c, d, rest @ ..] = bytes {
            let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
            let (data, rest) = rest.split_at(len);
            out.push(match side {
                b'C' => Client(data.to_vec()),
                b'S' => Server(data.to_vec()),
                other => panic!("a chunk from side {other}"),
            });
            bytes = rest;
        }
        out
    }

    /// Replays a recorded session from its startup message, whole and in small pieces.
    fn replay(bytes: &[u8]) -> Verdict {
        let chunks = chunks(bytes);
        let feed = |size: usize| {
            let mut t = Tracker::new();
            for chunk in &chunks {
                match chunk {
                    Client(b) => b.chunks(size).for_each(|p| t.client(p)),
                    Server(b) => b.chunks(size).for_each(|p| t.server(p)),
                }
                assert!(!t.verdict().lost, "in step all along");
            }
            assert!(t.backend_key().is_some(), "the handshake's key");
            t.verdict()
        };
        let whole = feed(usize::MAX);
        for size in [1, 3, 16] {
            assert_eq!(feed(size), whole, "in pieces of {size}");
        }
        whole
    }

    #[test]
    fn a_finished_copy_in_ends_quiet() {
        let v = replay(include_bytes!("transcripts/copy_in_finished.bin"));
        assert!(v.quiet() && v.may_lend(), "{v:?}");
    }

    #[test]
    fn a_transaction_and_a_failed_one() {
        let v = replay(include_bytes!("transcripts/in_transaction.bin"));
        assert_eq!(
            (v.status, v.due),
            (TransactionStatus::InTransaction, Due::Nothing)
        );
        let v = replay(include_bytes!("transcripts/failed_transaction.bin"));
        assert_eq!((v.status, v.due), (TransactionStatus::Failed, Due::Nothing));
    }

    #[test]
    fn the_whole_session_ends_idle_and_quiet() {
        let v = replay(include_bytes!("transcripts/session.bin"));
        assert!(v.quiet() && v.may_lend(), "{v:?}");
    }
}
