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

const POD: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 77, 2, 2), Ipv4Addr::new(10, 77, 2, 3)];

fn connect(authority: &str, forwarded: Option<&str>) -> Request<()> {
    let mut builder = Request::builder().method(Method::CONNECT).uri(authority);
    if let Some(forwarded) = forwarded {
        builder = builder.header(http::header::FORWARDED, forwarded);
    }
    builder.body(()).unwrap()
}

#[test]
fn connect_target_accepts_only_app_ports_of_the_pod() {
    let ok = connect_target(&connect("10.77.2.3:9080", None), &POD);
    assert_eq!(ok, Ok("10.77.2.3:9080".parse().unwrap()));
    for (authority, status) in [
        ("10.77.2.9:9080", StatusCode::BAD_REQUEST),
        ("details:9080", StatusCode::BAD_REQUEST),
        ("10.77.2.2:15008", StatusCode::BAD_REQUEST),
        ("10.77.2.2:15001", StatusCode::BAD_REQUEST),
        ("10.77.2.2:0", StatusCode::BAD_REQUEST),
    ] {
        let refused = connect_target(&connect(authority, None), &POD);
        assert_eq!(refused.map_err(|(s, _)| s), Err(status), "{authority}");
    }
    let get = Request::get("http://10.77.2.2:9080/").body(()).unwrap();
    assert_eq!(connect_target(&get, &POD).map_err(|(s, _)| s), Err(StatusCode::METHOD_NOT_ALLOWED));
}

#[test]
fn client_port_comes_from_forwarded_only_for_the_peer_address() {
    let peer: SocketAddr = "10.77.1.2:40000".parse().unwrap();
    let own = connect("10.77.2.2:9080", Some("for=\"10.77.1.2:51234\""));
    assert_eq!(client_port(&own, peer), 51234);
    let other = connect("10.77.2.2:9080", Some("for=\"10.77.1.9:51234\""));
    assert_eq!(client_port(&other, peer), 40000);
    assert_eq!(client_port(&connect("10.77.2.2:9080", None), peer), 40000);
}
