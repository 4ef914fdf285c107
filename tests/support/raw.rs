//! Raw TCP upstreams that script each connection byte by byte (for what a
//! hyper server would not do: close a keep-alive connection with a request
//! read and unanswered).

use tokio::io::AsyncRead;

/// Reads one request head (through its blank line) from `s`, a byte at a
/// time so nothing of the next request is taken; `None` if the connection
/// ends or fails first. For raw upstreams that script each connection.
pub async fn read_request_head<S: AsyncRead + Unpin>(s: &mut S) -> Option<String> {
    use tokio::io::AsyncReadExt as _;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => head.push(byte[0]),
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}
