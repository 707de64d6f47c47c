//! Read/write split through the proxy against the shared primary + replica:
//! reads land on the replica, writes and read-your-writes on the primary.

use crate::harness::{self, APP};

#[tokio::test]
async fn reads_go_to_the_replica_and_writes_to_the_primary() {
    let cluster = harness::cluster();
    let db = harness::fresh_db("routing_smoke");
    let replica = cluster.replica(0).addr();
    let proxy = harness::proxy(&format!("[cluster]\nreplicas = [\"{replica}\"]\n")).await;
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let port_sql = "select setting from pg_settings where name = 'port'";
    let replica_port = cluster.replica(0).port().to_string();
    let primary_port = cluster.primary().port().to_string();
    // The monitor needs a moment to see the replica caught up.
    harness::eventually(
        "a read served by the replica",
        std::time::Duration::from_secs(10),
        || {
            let client = &client;
            let replica_port = replica_port.clone();
            async move {
                let port = harness::scalar(client, port_sql).await.unwrap();
                (port.as_deref() == Some(&replica_port)).then_some(())
            }
        },
    )
    .await;
    client
        .batch_execute("create table t(id int primary key)")
        .await
        .unwrap();
    for i in 0..50 {
        client
            .execute("insert into t values ($1)", &[&i])
            .await
            .unwrap();
        let n = harness::scalar(&client, &format!("select count(*) from t where id = {i}"))
            .await
            .unwrap();
        assert_eq!(n.as_deref(), Some("1"), "read after own write {i}");
    }
    let hinted = harness::scalar(&client, &format!("/* pgsidecar:primary */ {port_sql}"))
        .await
        .unwrap();
    assert_eq!(hinted.as_deref(), Some(primary_port.as_str()));
}
