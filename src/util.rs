//! Leaf helpers shared by every layer; imports nothing of the crate.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The process's crypto provider (ring), for every TLS client and server.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// The clock every expiry that decides identity or standing reads (the lockout, the
/// builtin issuer's tokens and refresh families): the system's, plus an offset that only
/// a test moves ([`Clock::advance`]), so a test passes a lockout or a lifetime without
/// waiting for it. One per process state; clones share it.
#[derive(Clone, Debug, Default)]
pub struct Clock(Arc<std::sync::atomic::AtomicU64>);

impl Clock {
    fn offset(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Now, for durations.
    pub fn instant(&self) -> std::time::Instant {
        std::time::Instant::now() + self.offset()
    }

    /// Seconds since the Unix epoch.
    pub fn unix(&self) -> u64 {
        unix_now() + self.offset().as_secs()
    }

    /// Moves this clock forward by `by` (tests).
    pub fn advance(&self, by: std::time::Duration) {
        self.0
            .fetch_add(by.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A request's context that must be finished (logged, counted) exactly once.
pub trait Finishing {
    fn finish(&mut self);
}

/// Finishes its request's context exactly once: when the request completes
/// ([`Finish::complete`]), or when its future is dropped first (the client reset or went
/// away, shutdown passed its grace period). Inbound and egress both hold one per request.
pub struct Finish<T: Finishing>(Option<T>);

impl<T: Finishing> Default for Finish<T> {
    fn default() -> Self {
        Finish(None)
    }
}

impl<T: Finishing> Finish<T> {
    /// Starts guarding `t`, and lends it for the request to fill in.
    pub fn start(&mut self, t: T) -> &mut T {
        self.0.insert(t)
    }

    /// Finishes now and gives the finished context back.
    pub fn complete(mut self) -> Option<T> {
        let mut t = self.0.take();
        if let Some(t) = t.as_mut() {
            t.finish();
        }
        t
    }
}

impl<T: Finishing> Drop for Finish<T> {
    fn drop(&mut self) {
        if let Some(t) = self.0.as_mut() {
            t.finish();
        }
    }
}

/// Text a client or peer controls (a certificate name, a header, a claim, a path, a
/// library's error about what a peer sent), made safe to put into a log line or an error
/// message: control characters (C0, DEL, C1), the Unicode line and paragraph separators
/// and the bidirectional controls are written as escapes (`\n`, `\r`, `\t`, `\u{1b}`,
/// `\u{2028}`), so the text can neither start a line of its own nor drive a terminal nor
/// reorder what a reader sees. Everything else passes unchanged, without allocating.
pub struct Escaped<T>(pub T);

impl<T: std::fmt::Display> std::fmt::Display for Escaped<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        struct Out<'a, 'b>(&'a mut std::fmt::Formatter<'b>);
        impl Write for Out<'_, '_> {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                let mut rest = s;
                while let Some(i) = rest.find(needs_escape) {
                    self.0.write_str(&rest[..i])?;
                    // `find` returned the index of a char that starts there.
                    let c = rest[i..].chars().next().unwrap_or('\0');
                    match c {
                        '\n' => self.0.write_str("\\n")?,
                        '\r' => self.0.write_str("\\r")?,
                        '\t' => self.0.write_str("\\t")?,
                        c => write!(self.0, "\\u{{{:x}}}", c as u32)?,
                    }
                    rest = &rest[i + c.len_utf8()..];
                }
                self.0.write_str(rest)
            }
        }
        write!(Out(f), "{}", self.0)
    }
}

impl<T: std::fmt::Display> std::fmt::Debug for Escaped<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// [`Escaped`] as a `String`, for an error message built from peer data.
pub fn escaped(text: impl std::fmt::Display) -> String {
    Escaped(text).to_string()
}

/// Whether `c` must not reach a log line or a terminal as it is.
pub fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_text_cannot_break_a_line_or_drive_a_terminal() {
        let evil = "CN=ok\nINFO forged\r\x1b[31mred\x7f\u{85}\u{2028}\u{202e}gnp.exe\ttab";
        let out = escaped(evil);
        assert_eq!(
            out,
            "CN=ok\\nINFO forged\\r\\u{1b}[31mred\\u{7f}\\u{85}\\u{2028}\\u{202e}gnp.exe\\ttab"
        );
        assert!(!out.chars().any(needs_escape));
        assert_eq!(escaped("plain ünïcode / path?q=1"), "plain ünïcode / path?q=1");
        // Through a Display value too (an error whose message holds peer text).
        let e = std::io::Error::other("a\nb");
        assert_eq!(escaped(&e), "a\\nb");
    }
}

/// The client an address stands for, as limits count clients: an IPv4 address, or the
/// /64 of an IPv6 one (one client usually holds a whole /64; an IPv4 address mapped into
/// IPv6 is that address).
pub fn client_group(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(a) => a.to_string(),
        std::net::IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = a.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

#[cfg(test)]
mod group_tests {
    #[test]
    fn an_ipv6_client_is_its_64_and_a_mapped_ipv4_its_address() {
        let g = |s: &str| super::client_group(s.parse().unwrap());
        assert_eq!(g("2001:db8:1:2::a"), g("2001:db8:1:2:ffff::c"));
        assert_ne!(g("2001:db8:1:2::a"), g("2001:db8:1:3::a"));
        assert_eq!(g("::ffff:1.2.3.4"), "1.2.3.4");
        assert_eq!(g("1.2.3.4"), "1.2.3.4");
        assert_eq!(g("::1"), "0:0:0:0::/64");
    }
}
