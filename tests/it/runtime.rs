//! `[proxy] worker_threads`: the binary runs sessions on its main thread by
//! default and with 1, on one runtime worker per core with 0 and on N
//! workers with N,
//! and each way serves more clients than it has server connections without
//! losing or mixing work.

use crate::harness::{self, APP};
use crate::running;

/// Threads of process `pid` right now.
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("reading the proxy's threads")
        .count()
}

/// Eight clients, each running 25 transactions that insert and read back
/// their own rows, through a proxy with two server connections.
async fn concurrent_work(port: u16, db: &str) {
    let setup = harness::connect(
        &harness::cluster()
            .primary()
            .conn_string_as("postgres", None, db),
    )
    .await
    .unwrap();
    setup
        .batch_execute("CREATE TABLE t (client int, n int); GRANT ALL ON t TO PUBLIC")
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for client_no in 0..8 {
        let conn = format!(
            "host=127.0.0.1 port={port} user={} password={} dbname={db}",
            APP.name,
            APP.password.unwrap()
        );
        tasks.push(tokio::spawn(async move {
            let client = harness::connect(&conn).await.unwrap();
            for n in 0..25 {
                let rows = client
                    .simple_query(&format!(
                        "BEGIN; INSERT INTO t VALUES ({client_no}, {n}); \
                         SELECT count(*) FROM t WHERE client = {client_no}; COMMIT"
                    ))
                    .await
                    .unwrap();
                let seen = rows.iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                    _ => None,
                });
                assert_eq!(seen.as_deref(), Some((n + 1).to_string().as_str()));
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let total: i64 = setup
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 200);
}

async fn run_with(db: &str, extra_proxy: &str) -> (running::Running, usize) {
    let conf = running::ConfigFile::new(None, &format!("[proxy]\n{extra_proxy}[pool]\nsize = 2\n"));
    let proxy = running::start(&conf.path).await;
    concurrent_work(proxy.port, db).await;
    let pid = proxy.pid();
    (proxy, threads(pid))
}

#[tokio::test]
async fn sessions_run_on_the_main_thread_with_one_worker_thread() {
    let db = harness::fresh_db("runtime_one");
    let (proxy, threads) = run_with(&db, "worker_threads = 1\n").await;
    proxy.wait_for_log(&["ready", "worker_threads=1"]).await;
    // A current-thread runtime: the main thread and no runtime worker
    // (nothing here uses tokio's blocking pool).
    assert_eq!(threads, 1, "threads with worker_threads = 1");
}

#[tokio::test]
async fn worker_threads_runs_that_many_runtime_workers() {
    let db = harness::fresh_db("runtime_workers");
    let (proxy, threads) = run_with(&db, "worker_threads = 3\n").await;
    proxy.wait_for_log(&["ready", "worker_threads=3"]).await;
    // The main thread and three workers.
    assert!(threads > 3, "{threads} threads with worker_threads = 3");
}

#[tokio::test]
async fn the_default_is_one_thread() {
    let db = harness::fresh_db("runtime_default");
    let (proxy, threads) = run_with(&db, "").await;
    proxy.wait_for_log(&["ready", "worker_threads=1"]).await;
    assert_eq!(threads, 1, "threads by default");
}

#[tokio::test]
async fn zero_is_one_worker_per_core() {
    let db = harness::fresh_db("runtime_per_core");
    let (proxy, threads) = run_with(&db, "worker_threads = 0\n").await;
    proxy.wait_for_log(&["ready", "worker_threads=0"]).await;
    let cores = std::thread::available_parallelism().unwrap().get();
    assert!(threads > cores, "{threads} threads on {cores} cores");
}
