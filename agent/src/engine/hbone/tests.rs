use super::*;

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
