use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use tokio::{
    io::AsyncReadExt as _,
    net::{TcpListener, TcpStream},
};

use super::*;

/// The app's and the engine's ends of a loopback TCP connection.
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (engine, _) = listener.accept().await.unwrap();
    (app, engine)
}

/// A CONNECT on an in-memory HTTP/2 link; `peer` gets the server's side of the stream.
async fn connect<F, Fut>(peer: F) -> (SendStream<Bytes>, h2::client::ResponseFuture)
where
    F: FnOnce(RecvStream, h2::server::SendResponse<Bytes>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (client, server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let mut h2 = h2::server::handshake(server).await.unwrap();
        let (request, respond) = h2.accept().await.unwrap().unwrap();
        tokio::spawn(async move { while h2.accept().await.is_some() {} });
        peer(request.into_body(), respond).await;
    });
    let (sender, driver) = h2::client::handshake(client).await.unwrap();
    tokio::spawn(driver);
    let request = Request::builder().method(Method::CONNECT).uri("10.0.0.1:80").body(()).unwrap();
    let (response, send) = sender.ready().await.unwrap().send_request(request, false).unwrap();
    (send, response)
}

fn ok() -> Response<()> {
    Response::builder().status(StatusCode::OK).body(()).unwrap()
}

#[tokio::test]
async fn the_apps_first_bytes_go_out_before_the_answer_and_count() {
    // The peer answers only once the app's request reached it: without early data this
    // would wait forever.
    let (mut send, response) = connect(|mut body, mut respond| async move {
        let first = body.data().await.unwrap().unwrap();
        assert_eq!(&first[..], b"ping");
        let mut reply = respond.send_response(ok(), false).unwrap();
        reply.send_data(Bytes::from_static(b"pong"), true).unwrap();
        while body.data().await.is_some() {}
    })
    .await;
    let (mut app, mut engine) = tcp_pair().await;
    app.write_all(b"ping").await.unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(5), while_answering(&engine, &mut send, response));
    let (answer, early) = waited.await.expect("the request went out before the answer");
    assert!(matches!(early, Early::Sent(4)), "{early:?}");
    let recv = answer.unwrap().into_body();
    let app_side = tokio::spawn(async move {
        let mut reply = Vec::new();
        app.read_to_end(&mut reply).await.unwrap();
        app.shutdown().await.unwrap();
        reply
    });
    let (copied, error) = bidirectional(&mut engine, send, recv, early).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(copied, Copied { sent: 4, received: 4 });
    assert_eq!(app_side.await.unwrap(), b"pong");
}

#[tokio::test]
async fn a_quiet_app_waits_for_the_answer_and_an_app_that_closed_sends_end_stream() {
    let (mut send, response) = connect(|_, mut respond| async move {
        respond.send_response(ok(), true).unwrap();
    })
    .await;
    let (_app, engine) = tcp_pair().await;
    let (answer, early) = while_answering(&engine, &mut send, response).await;
    assert!(matches!(early, Early::Nothing), "{early:?}");
    assert_eq!(answer.unwrap().status(), StatusCode::OK);

    // The "answer" here is the peer seeing END_STREAM, which only the early EOF can send.
    let ended = CancellationToken::new();
    let peer_saw_end = ended.clone();
    let (mut send, _response) = connect(move |mut body, _respond| async move {
        let mut bytes = 0;
        while let Some(data) = body.data().await {
            bytes += data.unwrap().len();
        }
        assert_eq!(bytes, 0, "END_STREAM and no data");
        peer_saw_end.cancel();
    })
    .await;
    let (app, engine) = tcp_pair().await;
    drop(app);
    let answer = async { ended.cancelled().await };
    let waited = tokio::time::timeout(Duration::from_secs(5), while_answering(&engine, &mut send, answer));
    let ((), early) = waited.await.expect("the peer saw END_STREAM");
    assert!(matches!(early, Early::Eof), "{early:?}");
}
