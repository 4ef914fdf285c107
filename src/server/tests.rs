//! The first-bytes sniff that tells HTTP/1.1 from h2.

use super::{H2_PREFACE, Sniffed, sniff};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// A connected pair: (client end, server end).
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (client, server)
}

/// What `sniff` makes of `sent`, and that it consumed nothing.
async fn sniffed(sent: &[u8]) -> Sniffed {
    let (mut client, server) = pair().await;
    client.write_all(sent).await.unwrap();
    let s = sniff(&server).await.unwrap();
    let mut buf = vec![0; sent.len()];
    assert_eq!(server.peek(&mut buf).await.unwrap(), sent.len());
    assert_eq!(buf, sent, "sniffing must not consume the bytes");
    s
}

#[tokio::test]
async fn sniff_tells_http1_from_the_h2_preface() {
    assert_eq!(sniffed(b"GET / HTTP/1.1\r\n\r\n").await, Sniffed::H1);
    // Starts like the preface ("P"), then is not it.
    assert_eq!(sniffed(b"POST / HTTP/1.1\r\n\r\n").await, Sniffed::H1);
    assert_eq!(sniffed(b"PRI / HTTP/1.1\r\n\r\n").await, Sniffed::H1);
    assert_eq!(sniffed(H2_PREFACE).await, Sniffed::H2);
    let mut preface_and_settings = H2_PREFACE.to_vec();
    preface_and_settings.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    assert_eq!(sniffed(&preface_and_settings).await, Sniffed::H2);
    // Part of the preface: only the rest can tell.
    assert_eq!(sniffed(&H2_PREFACE[..10]).await, Sniffed::Unsure);
    assert_eq!(sniffed(b"P").await, Sniffed::Unsure);
}

#[tokio::test]
async fn sniff_sees_a_caller_that_closed_without_a_word() {
    let (client, server) = pair().await;
    drop(client);
    assert_eq!(sniff(&server).await.unwrap(), Sniffed::Closed);
}
