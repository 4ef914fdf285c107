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
//!     containers resolve like `..`; `%3B` counts as `;`), also once
//!     decoded (`%2e%2e`);
//!   - an empty segment (`//`, which many servers merge) other than the
//!     last (`/app/`, Tomcat's `/app/;jsessionid=...`);
//!   - a literal `;params` in a segment other than the last (servlet
//!     containers drop them: `/api/admin;x/secret` is `/api/admin/secret`
//!     to them, which a route on `/api/admin/` would not match here);
//!   - a backslash (which some servers take for a slash);
//!   - a `%` that does not start a `%XX` escape (nginx and Go refuse it
//!     too): kept, it could join hex digits decoded after it into a new
//!     escape, `%6%31` into `%61`;
//! - **keeps an encoded slash or backslash** (`%2F`, `%5C`) as it is
//!   ([`EscapedSlashes::Keep`], Envoy's default `KEEP_UNCHANGED`): APIs put
//!   them in ids (GitLab's `projects/group%2Fproject`). For the checks
//!   above it counts as a slash, so `a%2F..%2Fadmin` is still refused,
//!   whatever the upstream does with it. [`EscapedSlashes::Reject`]
//!   refuses it instead (Envoy's `REJECT_REQUEST`).
//!
//! Other escapes (`%20`, `%25`, UTF-8) stay escapes, written with upper-case
//! hex digits (RFC 3986 6.2.2.1: `%2f` and `%2F` are one URI, and route
//! alike); `%252e` stays `%252e`. Since every `%` left starts its own
//! escape, the result decoded once, as an upstream would, has no dot
//! segment and no inner empty one, encoded slashes counted as slashes (a
//! test checks every short path over the characters that matter). Route
//! prefixes must be written in this normal form (the config check says
//! so).

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
    let mut out = Rewrite::default();
    // The segment being read: where it starts, where its `;params` start.
    let mut start = 0;
    let mut params = None;
    // Whether the segment has a literal `;` (servlet containers split
    // params off before decoding: `%3B` is part of the name to them).
    let mut literal_params = false;
    // Whether the segment being read is the one before a leading `/`.
    let mut leading = true;
    let mut i = 0;
    // Ordinary bytes cost a comparison each; segments are checked at their
    // ends, from the bytes.
    while let Some(&c) = b.get(i) {
        match c {
            b'/' => {
                check(b, start, params.unwrap_or(i), leading, false)?;
                if literal_params {
                    return Err(INNER_PARAMS);
                }
                (start, params, leading) = (i + 1, None, false);
            }
            b';' => {
                params.get_or_insert(i);
                literal_params = true;
            }
            b'\\' => return Err("a backslash"),
            b'%' => {
                // A `%` that starts no escape is refused (as nginx and Go
                // do): kept, it could join hex digits decoded after it into
                // a new escape (`%6%31` would be `%61`).
                let d = escaped(b, i).ok_or("a % that does not start a %XX escape")?;
                if is_unreserved(d) {
                    out.change(b, i, &[d]);
                } else {
                    match d {
                        b'/' | b'\\' => {
                            if slashes == EscapedSlashes::Reject {
                                return Err("an encoded slash or backslash (%2F, %5C)");
                            }
                            // A slash to whoever decodes it: the same checks.
                            check(b, start, params.unwrap_or(i), leading, false)?;
                            if literal_params {
                                return Err(INNER_PARAMS);
                            }
                            (start, params, leading) = (i + 3, None, false);
                        }
                        // An encoded `;` starts params to whoever decodes
                        // before splitting them off: `..%3B` is `..` too.
                        b';' => {
                            params.get_or_insert(i);
                        }
                        _ => {}
                    }
                    // Upper-case hex digits (RFC 3986 6.2.2.1), so that
                    // `%2f` and `%2F` route alike.
                    let upper = [b'%', HEX[usize::from(d >> 4)], HEX[usize::from(d & 15)]];
                    if b.get(i..i + 3) != Some(&upper[..]) {
                        out.change(b, i, &upper);
                    }
                }
                i += 3;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    check(b, start, params.unwrap_or(b.len()), leading, true)?;
    Ok(out.finish(b))
}

/// A segment other than the last with `;params`: servlet containers
/// (Tomcat, Jetty, Spring) drop them before mapping the path, so
/// `/api/admin;x/secret` is `/api/admin/secret` to them, while a route on
/// `/api/admin/` does not match it here and a route on `/api/` (and its
/// client permissions) would. In the last segment (`/app/page;jsessionid=`)
/// they cannot move the path across a route prefix that ends in `/`.
const INNER_PARAMS: Problem = "a ;parameter in a path segment other than the last";

/// Checks the segment whose name (the part before any `;params`) is
/// `b[start..end]`, escapes still in it: `.` and `..` (also encoded, as
/// `%2E`) are refused, and so is an empty name, except before a leading
/// `/` (every origin-form path has that one) and in the last segment (a
/// trailing slash, Tomcat's `/app/;jsessionid=...`).
fn check(b: &[u8], start: usize, end: usize, leading: bool, last: bool) -> Result<(), Problem> {
    let name = b.get(start..end).unwrap_or_default();
    match name.len() {
        0 if (leading && end == start && b.get(start) != Some(&b';')) || last => Ok(()),
        // Servlet containers drop a segment's `;params`: `;x` is empty.
        0 => Err("an empty path segment (//)"),
        // At most `%2E%2E`: only short names can be dots.
        1..=6 if is_dots(name) => Err("a . or .. path segment"),
        _ => Ok(()),
    }
}

/// Whether `name` is `.` or `..`, each dot literal or `%2E`.
fn is_dots(name: &[u8]) -> bool {
    let mut dots = 0;
    let mut i = 0;
    while let Some(&c) = name.get(i) {
        match c {
            b'.' => i += 1,
            b'%' if escaped(name, i) == Some(b'.') => i += 3,
            _ => return false,
        }
        dots += 1;
    }
    matches!(dots, 1 | 2)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// The normalized path, made only once it differs from the original.
#[derive(Default)]
struct Rewrite {
    out: Option<Vec<u8>>,
    /// Bytes of the original already accounted for in `out`.
    done: usize,
}

impl Rewrite {
    /// The 3-byte escape at `at` in `src` is replaced with `with`.
    fn change(&mut self, src: &[u8], at: usize, with: &[u8]) {
        let out = self.out.get_or_insert_with(Vec::new);
        out.extend_from_slice(src.get(self.done..at).unwrap_or_default());
        out.extend_from_slice(with);
        self.done = at + 3;
    }

    /// The whole normalized path, if it differs.
    fn finish(self, src: &[u8]) -> Option<String> {
        let mut out = self.out?;
        out.extend_from_slice(src.get(self.done..).unwrap_or_default());
        // Only ASCII was changed in a `str`: still UTF-8.
        Some(String::from_utf8_lossy(&out).into_owned())
    }
}

/// The byte `%XY` at `at` stands for, if `b[at..]` is one.
fn escaped(b: &[u8], at: usize) -> Option<u8> {
    let hex = |i: usize| b.get(i).and_then(|h| (*h as char).to_digit(16));
    Some((hex(at + 1)? * 16 + hex(at + 2)?) as u8)
}

/// Whether the first segment of `rest` (a normalized path with a route's
/// prefix stripped off mid-segment: `/pub../x` less `/pub`) is `.` or `..`
/// (its `;params` dropped), which would climb out of the upstream's base
/// path once joined to it.
pub fn starts_with_dot_segment(rest: &str) -> bool {
    // Normalized: a dot is never encoded here. What ends the name: a
    // slash, encoded or not, or `;params`.
    rest.strip_prefix("..")
        .or_else(|| rest.strip_prefix('.'))
        .is_some_and(|after| {
            after.is_empty()
                || ["/", "%2F", "%5C", ";", "%3B"]
                    .iter()
                    .any(|end| after.starts_with(end))
        })
}

/// RFC 3986's unreserved characters.
fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
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
            "/a/b%20c",
            "/caf%C3%A9",
            "/100%25",
            "/a%252e%252e/b",
            "/a%3B/b",
            "/app/;jsessionid=ABC",
            "/;x",
            "/api/x/;v=1",
            "*",
            "",
            "/projects/group%2Fproject",
            "/projects/group%2Fsub%2Fproject/files",
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
            ("/%61%25", "/a%25"),
            // Kept escapes get upper-case hex.
            ("/g%2fp", "/g%2Fp"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a%3b%7e", "/a%3B~"),
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
            ("/a%", "a % that does not start a %XX escape"),
            ("/a%zz", "a % that does not start a %XX escape"),
            ("/a%4", "a % that does not start a %XX escape"),
            // Decoded digits cannot complete an escape.
            ("/api/%6%31dmin", "a % that does not start a %XX escape"),
            ("/api/%%36%31dmin", "a % that does not start a %XX escape"),
            (
                "/p/%2%65%2%65/admin",
                "a % that does not start a %XX escape",
            ),
            ("/api/..;", "a . or .. path segment"),
            ("/api/a;b/c", INNER_PARAMS),
            ("/api/admin;x/secret", INNER_PARAMS),
            ("/api/admin;/secret", INNER_PARAMS),
            ("/api/admin;x%2Fsecret", INNER_PARAMS),
            ("/a;b%2F", INNER_PARAMS),
        ] {
            assert_eq!(keep(bad), Err(problem), "{bad}");
        }
    }

    /// Every path over a small alphabet of the characters that matter, up
    /// to 6 bytes after the leading `/`: what passes is in normal form
    /// (normalizing it again changes nothing), and decoded once more, as
    /// an upstream would, it has no `.`, `..` or inner empty segment, with
    /// `/` and `\\` as separators and `;params` dropped.
    #[test]
    fn what_passes_decodes_to_no_dot_or_empty_segment() {
        let alphabet = b"/.%2eF5C3B61;a";
        let mut checked = 0;
        let mut path = vec![b'/'];
        fn each(path: &mut Vec<u8>, left: usize, alphabet: &[u8], checked: &mut usize) {
            let s = std::str::from_utf8(path).unwrap_or_default();
            if let Ok(n) = keep(s) {
                let p = n.unwrap_or_else(|| s.to_owned());
                assert_eq!(keep(&p), Ok(None), "{s} -> {p} is not stable");
                let decoded = decode_all(&p);
                let segments: Vec<&[u8]> = decoded.split(|c| *c == b'/' || *c == b'\\').collect();
                let last = segments.len() - 1;
                for (k, seg) in segments.iter().enumerate().skip(1) {
                    let name = seg.split(|c| *c == b';').next().unwrap_or_default();
                    let bad = matches!(name, b"." | b"..") || (name.is_empty() && k < last);
                    assert!(
                        !bad,
                        "{s} -> {p} decodes to {:?}",
                        String::from_utf8_lossy(&decoded)
                    );
                }
                *checked += 1;
            }
            if left == 0 {
                return;
            }
            for &c in alphabet {
                path.push(c);
                each(path, left - 1, alphabet, checked);
                path.pop();
            }
        }
        each(&mut path, 5, alphabet, &mut checked);
        assert!(checked > 10_000, "{checked}");
    }

    /// Every `%XX` decoded once.
    fn decode_all(p: &str) -> Vec<u8> {
        let b = p.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while let Some(&c) = b.get(i) {
            match escaped(b, i) {
                Some(d) if c == b'%' => {
                    out.push(d);
                    i += 3;
                }
                _ => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        out
    }

    #[test]
    fn a_dot_segment_left_by_a_stripped_prefix_is_found() {
        for dot in ["..", ".", "../x", "..;a/x", "..%2Fx", ".%5Cx", "..%3Bv"] {
            assert!(starts_with_dot_segment(dot), "{dot}");
        }
        for fine in ["", "x", "..x/y", "...", "x/../", "/..", ".a"] {
            assert!(!starts_with_dot_segment(fine), "{fine}");
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
