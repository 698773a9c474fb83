//! The SSRF guard for partner-supplied URLs (webhooks, Teams, Slack).
//!
//! A partner types a URL; we must not let it reach the cloud metadata service, the cluster
//! network or our own admin ports. Checking the hostname is useless (DNS can say anything,
//! and can change between the check and the connect), so the check runs on the *resolved*
//! addresses inside the HTTP client's resolver, and the client connects to exactly the
//! addresses that passed. IP-literal URLs never reach a resolver, so they are checked before
//! the request is built. Redirects are not followed.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use crate::error::{NotifierError, Result};

/// Which non-public destinations an operator allows. Everything is refused by default.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SsrfPolicy {
    /// 127.0.0.0/8 and ::1 (tests and single-host setups).
    pub allow_loopback: bool,
    /// RFC 1918, CGNAT 100.64.0.0/10 and IPv6 unique-local fc00::/7 (in-cluster receivers).
    pub allow_private: bool,
    /// 169.254.0.0/16 and fe80::/10. Cloud metadata lives here; allow only when you must.
    pub allow_link_local: bool,
}

impl SsrfPolicy {
    /// Whether a connection to `ip` is allowed.
    pub fn allows(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => self.allows_v4(v4),
            IpAddr::V6(v6) => self.allows_v6(v6),
        }
    }

    fn allows_v4(&self, ip: Ipv4Addr) -> bool {
        let o = ip.octets();
        if ip.is_loopback() {
            return self.allow_loopback;
        }
        if ip.is_link_local() {
            return self.allow_link_local;
        }
        let cgnat = o[0] == 100 && (o[1] & 0xC0) == 64;
        if ip.is_private() || cgnat {
            return self.allow_private;
        }
        let never = ip.is_unspecified()
            || o[0] == 0
            || ip.is_broadcast()
            || ip.is_multicast()
            || ip.is_documentation()
            // 192.0.0.0/24 (IETF protocol assignments), 198.18.0.0/15 (benchmarking),
            // 240.0.0.0/4 (reserved).
            || (o[0] == 192 && o[1] == 0 && o[2] == 0)
            || (o[0] == 198 && (o[1] & 0xFE) == 18)
            || o[0] >= 240;
        !never
    }

    fn allows_v6(&self, ip: Ipv6Addr) -> bool {
        // An IPv4 address dressed as IPv6 (::ffff:a.b.c.d, or NAT64 64:ff9b::a.b.c.d) is
        // judged as the IPv4 address it reaches.
        if let Some(v4) = ip.to_ipv4_mapped() {
            return self.allows_v4(v4);
        }
        let s = ip.segments();
        if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
            let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
            return self.allows_v4(v4);
        }
        if ip.is_loopback() {
            return self.allow_loopback;
        }
        if (s[0] & 0xFFC0) == 0xFE80 {
            return self.allow_link_local;
        }
        if (s[0] & 0xFE00) == 0xFC00 {
            return self.allow_private;
        }
        // Unspecified, multicast, IPv4-compatible (::a.b.c.d), documentation 2001:db8::/32.
        let never = ip.is_unspecified()
            || ip.is_multicast()
            || (s[0..6] == [0, 0, 0, 0, 0, 0])
            || (s[0] == 0x2001 && s[1] == 0x0db8);
        !never
    }

    /// Whether `host` is a name RFC 6761 defines as loopback (`localhost`, `*.localhost`, any
    /// case, trailing dot or not) while loopback is not allowed. Checked when a partner types
    /// a URL: a name the lookup there cannot resolve (`LOCALHOST.` on a test machine; the
    /// security matrix found it stored) would otherwise pass, and some resolvers answer these
    /// names without /etc/hosts. The resolver still guards every send.
    pub fn refuses_name(&self, host: &str) -> bool {
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        !self.allow_loopback && (name == "localhost" || name.ends_with(".localhost"))
    }

    /// Checks a URL before any request: scheme, and the address when the host is an IP.
    pub fn check_url(&self, raw: &str) -> Result<url::Url> {
        let url = url::Url::parse(raw)
            .map_err(|e| NotifierError::AddressRefused(format!("invalid url: {e}")))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(NotifierError::AddressRefused(format!(
                "scheme {} is not allowed",
                url.scheme()
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(NotifierError::AddressRefused(
                "credentials in the url are not allowed".into(),
            ));
        }
        let ip = match url.host() {
            Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
            Some(url::Host::Domain(_)) => None,
            None => return Err(NotifierError::AddressRefused("url has no host".into())),
        };
        if let Some(ip) = ip.filter(|ip| !self.allows(*ip)) {
            return Err(NotifierError::AddressRefused(format!(
                "{ip} is not a public address"
            )));
        }
        Ok(url)
    }
}

/// A resolver that drops every address the policy refuses, and fails when none is left, so
/// the client connects only to checked addresses (no second lookup for DNS rebinding).
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: SsrfPolicy,
}

impl GuardedResolver {
    pub fn new(policy: SsrfPolicy) -> Arc<Self> {
        Arc::new(Self { policy })
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|a| policy.allows(a.ip()))
                .collect();
            if allowed.is_empty() {
                let refused: Vec<String> = resolved.iter().map(|a| a.ip().to_string()).collect();
                let err: Box<dyn std::error::Error + Send + Sync> = format!(
                    "ssrf guard: {host} resolves only to refused addresses [{}]",
                    refused.join(", ")
                )
                .into();
                return Err(err);
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_public_addresses_by_default() {
        let p = SsrfPolicy::default();
        for bad in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "ff02::1",
        ] {
            assert!(!p.allows(bad.parse().unwrap()), "{bad} allowed");
        }
        for good in [
            "8.8.8.8",
            "20.190.128.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(p.allows(good.parse().unwrap()), "{good} refused");
        }
    }

    #[test]
    fn operator_allowances_are_separate() {
        let loopback = SsrfPolicy {
            allow_loopback: true,
            ..Default::default()
        };
        assert!(loopback.allows("127.0.0.1".parse().unwrap()));
        assert!(loopback.allows("::1".parse().unwrap()));
        assert!(!loopback.allows("10.0.0.1".parse().unwrap()));
        assert!(!loopback.allows("169.254.169.254".parse().unwrap()));
    }

    #[test]
    fn checks_literal_urls() {
        let p = SsrfPolicy::default();
        assert!(
            p.check_url("http://169.254.169.254/latest/meta-data")
                .is_err()
        );
        assert!(p.check_url("http://[::ffff:a9fe:a9fe]/").is_err());
        assert!(p.check_url("file:///etc/passwd").is_err());
        assert!(p.check_url("https://user:pw@hooks.example.com/").is_err());
        assert!(p.check_url("https://hooks.example.com/x").is_ok());
        for name in ["localhost", "LOCALHOST.", "api.localhost", "x.LocalHost."] {
            assert!(p.refuses_name(name), "{name}");
        }
        assert!(!p.refuses_name("notlocalhost.example"));
        let loopback = SsrfPolicy {
            allow_loopback: true,
            ..SsrfPolicy::default()
        };
        assert!(!loopback.refuses_name("localhost"));
    }
}
