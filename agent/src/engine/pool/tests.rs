use super::*;
use crate::identity::IdentityOptions;

/// A pooled connection over an in-memory HTTP/2 link; `active` streams.
async fn connection(active: usize) -> Arc<Connection> {
    let (client, server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        if let Ok(mut h2) = h2::server::handshake(server).await {
            while h2.accept().await.is_some() {}
        }
    });
    let (sender, driver) = h2::client::handshake(client).await.unwrap();
    tokio::spawn(driver);
    Arc::new(Connection {
        sender,
        active: AtomicUsize::new(active),
        dead: Arc::default(),
        tls: TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "test".into(),
            peer_serial: None,
            peer_not_after: None,
        },
        peer_identity: String::new(),
        idle_since: Mutex::new(Instant::now()),
    })
}

fn key(n: u8) -> PoolKey {
    PoolKey {
        src_ip: Ipv4Addr::new(10, 0, 0, 1),
        src_identity: "spiffe://cluster.local/ns/a/sa/a".into(),
        dst_identity: "spiffe://cluster.local/ns/b/sa/b".into(),
        dst: SocketAddr::new(Ipv4Addr::new(10, 0, 1, n).into(), 15008),
    }
}

#[tokio::test]
async fn a_full_pool_closes_the_connection_idle_longest_else_refuses() {
    let state = tempfile::tempdir().unwrap();
    let options = IdentityOptions {
        trust_domain: "cluster.local".into(),
        ca_dir: None,
        remote_ca: None,
        state_dir: state.path().into(),
        cert_ttl: Duration::from_secs(3600),
        post_quantum: false,
    };
    let pool = Pool::new(Arc::new(Identities::new(&options).unwrap()), 100, 2);
    let (busy, idle) = (connection(1).await, connection(0).await);
    {
        let mut map = pool.connections.lock().unwrap();
        map.entry(key(1)).or_default().push(busy.clone());
        map.entry(key(2)).or_default().push(idle.clone());
    }
    assert_eq!(pool.table(), TableStat::new(2, 2, 0));
    // Full: the idle connection makes room for a dial, which counts until it is pooled.
    let slot = pool.admit().unwrap();
    assert_eq!(pool.connection_count(), 1);
    assert!(pool.reserve(&key(2)).is_none(), "the idle connection was closed");
    // The busy connection and the dial in progress fill the pool: refused.
    assert!(matches!(pool.admit().err(), Some(TunnelError::PoolFull(2))));
    assert_eq!(pool.table().overflows, 2);
    drop(slot);
    let _room = pool.admit().expect("the dial ended: room again");
    let refusal = TunnelError::PoolFull(2).to_string();
    assert!(refusal.contains("--hbone-max-connections"), "{refusal}");
}
