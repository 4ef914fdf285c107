//! The request path, checked and normalized before routing.
//!
//! Routes compare paths as bytes; upstreams resolve them. A path that
//! routes here as one thing and resolves upstream to another could reach a
//! route the caller may not use (`/api/public/../admin` matches
//! `/api/public/` here and is `/api/admin` upstream). [`normalize`]
//! therefore:
//!
//! - **decodes percent-encoded unreserved characters** (`%61` is `a`,
//!   `%7E` is `~`): RFC 3986 (2.3, 6.2.2.2) makes both forms the same URI,
//!   so the decoded path is the one routed and forwarded. Java's
//!   `URLEncoder`, for one, encodes `~`;
//! - **refuses** what upstreams resolve differently from the bytes:
//!   - a `.` or `..` segment, also with `;params` (`..;`, which servlet
//!     containers resolve like `..`), also once decoded (`%2e%2e`);
//!   - an empty segment (`//`, which many servers merge);
//!   - a backslash (which some servers take for a slash);
//! - **keeps an encoded slash or backslash** (`%2F`, `%5C`) as it is
//!   ([`EscapedSlashes::Keep`], Envoy's default `KEEP_UNCHANGED`): APIs put
//!   them in ids (GitLab's `projects/group%2Fproject`). For the checks
//!   above it counts as a slash, so `a%2F..%2Fadmin` is still refused,
//!   whatever the upstream does with it. [`EscapedSlashes::Reject`]
//!   refuses it instead (Envoy's `REJECT_REQUEST`).
//!
//! Other percent-encodings (`%20`, `%25`, UTF-8) are forwarded as they are;
//! `%252e` stays `%252e` (one decoding never makes it a dot).

use crate::config::EscapedSlashes;

/// What [`normalize`] found wrong with a path: the phrase completes "the
/// request path has ...".
pub type Problem = &'static str;

/// Checks `path` (see the module docs). `Ok(None)`: route and forward it
/// as it is (the common case, which allocates nothing); `Ok(Some(p))`:
/// use `p`, the path with its encoded unreserved characters decoded;
/// `Err`: refuse the request.
pub fn normalize(path: &str, slashes: EscapedSlashes) -> Result<Option<String>, Problem> {
    let b = path.as_bytes();
    // The path with unreserved characters decoded, once one is found.
    let mut decoded: Option<Vec<u8>> = None;
    let mut seg = Segment::default();
    // Whether the segment being read is the one before a leading `/`.
    let mut leading = true;
    let mut i = 0;
    loop {
        let Some(&c) = b.get(i) else {
            // The last segment may be empty: a trailing slash.
            if !seg.is_empty() || leading {
                seg.check(leading)?;
            }
            break;
        };
        // Bytes read, and the byte they decode to if they are an encoded
        // unreserved character.
        let (len, unreserved) = match c {
            b'%' => match escaped(b, i) {
                Some(d) if is_unreserved(d) => (3, Some(d)),
                Some(_) => (3, None),
                None => (1, None),
            },
            _ => (1, None),
        };
        match (c, len) {
            (b'/', _) => {
                seg.check(leading)?;
                seg = Segment::default();
                leading = false;
            }
            (b'\\', _) => return Err("a backslash"),
            (b'%', 3) => match unreserved {
                Some(d) => {
                    seg.push(d);
                    decoded.get_or_insert_with(|| b.get(..i).unwrap_or_default().to_vec());
                }
                None if matches!(escaped(b, i), Some(b'/' | b'\\')) => {
                    if slashes == EscapedSlashes::Reject {
                        return Err("an encoded slash or backslash (%2F, %5C)");
                    }
                    // A slash to whoever decodes it: the same checks.
                    seg.check(leading)?;
                    seg = Segment::default();
                    leading = false;
                }
                None => seg.push(b'%'),
            },
            _ => seg.push(c),
        }
        if let Some(out) = decoded.as_mut() {
            match unreserved {
                Some(d) => out.push(d),
                None => out.extend_from_slice(b.get(i..i + len).unwrap_or_default()),
            }
        }
        i += len;
    }
    // Decoding ASCII unreserved characters out of a `str` keeps it UTF-8.
    Ok(decoded.map(|d| String::from_utf8_lossy(&d).into_owned()))
}

/// The byte `%XY` at `at` stands for, if `b[at..]` is one.
fn escaped(b: &[u8], at: usize) -> Option<u8> {
    let hex = |i: usize| b.get(i).and_then(|h| (*h as char).to_digit(16));
    Some((hex(at + 1)? * 16 + hex(at + 2)?) as u8)
}

/// RFC 3986's unreserved characters.
fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// What the checks need of one segment: its name (the part before any
/// `;params`), as far as it can be `.`, `..` or empty.
#[derive(Default)]
struct Segment {
    /// Bytes of the name so far.
    name_len: usize,
    /// Whether every byte of the name so far is a `.`.
    dots: bool,
    /// A `;` was seen: the rest are params.
    params: bool,
    /// Any byte at all (params included).
    any: bool,
}

impl Segment {
    fn push(&mut self, c: u8) {
        if !self.any {
            self.dots = true;
        }
        self.any = true;
        if self.params {
            return;
        }
        if c == b';' {
            self.params = true;
        } else {
            self.name_len += 1;
            self.dots &= c == b'.';
        }
    }

    fn is_empty(&self) -> bool {
        !self.any
    }

    /// Whether the segment may stand; the one before a leading `/` is
    /// empty in every origin-form path.
    fn check(&self, leading: bool) -> Result<(), Problem> {
        if leading && !self.any {
            return Ok(());
        }
        match self.name_len {
            // Servlet containers drop a segment's `;params`: `;x` is empty.
            0 => Err("an empty path segment (//)"),
            1 | 2 if self.dots => Err("a . or .. path segment"),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep(path: &str) -> Result<Option<String>, Problem> {
        normalize(path, EscapedSlashes::Keep)
    }

    #[test]
    fn ordinary_paths_pass_unchanged() {
        for ok in [
            "/",
            "/api/",
            "/api/x",
            "/api/x.json",
            "/api/.well-known/x",
            "/api/..x/y",
            "/api/x../y",
            "/api/.../y",
            "/api/a;b/c",
            "/a/b%20c",
            "/caf%C3%A9",
            "/100%25",
            "/a%252e%252e/b",
            "/a%",
            "/a%zz",
            "/a%4",
            "/a%3B/b",
            "*",
            "",
            "/projects/group%2Fproject",
            "/projects/group%2fsub%2Fproject/files",
            "/a%5Cb",
            "/trailing%2F",
        ] {
            assert_eq!(keep(ok), Ok(None), "{ok}");
        }
    }

    #[test]
    fn encoded_unreserved_characters_are_decoded() {
        for (path, want) in [
            ("/api/%61dmin", "/api/admin"),
            ("/%7Euser/x", "/~user/x"),
            ("/a%7e", "/a~"),
            ("/a%2Db%5F%2e", "/a-b_."),
            ("/a%41%42%43/b%20c?", "/aABC/b%20c?"),
            ("/x/%2e%2ex", "/x/..x"),
            ("/g%2Fp%7E", "/g%2Fp~"),
            ("/caf%C3%A9/%61", "/caf%C3%A9/a"),
            ("/%61%", "/a%"),
        ] {
            assert_eq!(keep(path), Ok(Some(want.to_owned())), "{path}");
        }
    }

    #[test]
    fn paths_that_resolve_elsewhere_are_refused() {
        for (bad, problem) in [
            ("/api/x/../admin", "a . or .. path segment"),
            ("/api/./admin", "a . or .. path segment"),
            ("/api/..", "a . or .. path segment"),
            ("/api/.", "a . or .. path segment"),
            ("/..", "a . or .. path segment"),
            ("..", "a . or .. path segment"),
            ("/api/%2e%2e/admin", "a . or .. path segment"),
            ("/api/%2E./admin", "a . or .. path segment"),
            ("/api/public/..;/admin", "a . or .. path segment"),
            ("/api/.;x/admin", "a . or .. path segment"),
            ("/api/x%2F..%2Fadmin", "a . or .. path segment"),
            ("/api/x%5C..%5Cadmin", "a . or .. path segment"),
            ("/api/x%2F..", "a . or .. path segment"),
            ("/api//admin", "an empty path segment (//)"),
            ("//api", "an empty path segment (//)"),
            ("/api/;x/admin", "an empty path segment (//)"),
            ("/api%2F%2Fadmin", "an empty path segment (//)"),
            ("/api/%2Fadmin", "an empty path segment (//)"),
            ("/api\\admin", "a backslash"),
        ] {
            assert_eq!(keep(bad), Err(problem), "{bad}");
        }
    }

    #[test]
    fn reject_refuses_encoded_slashes() {
        for bad in ["/g%2Fp", "/g%2fp", "/a%5Cb", "/a%5cb"] {
            assert_eq!(
                normalize(bad, EscapedSlashes::Reject),
                Err("an encoded slash or backslash (%2F, %5C)"),
                "{bad}"
            );
        }
        assert_eq!(normalize("/a%20b", EscapedSlashes::Reject), Ok(None));
        assert_eq!(
            normalize("/%61", EscapedSlashes::Reject),
            Ok(Some("/a".into()))
        );
    }
}
