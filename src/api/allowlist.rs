//! Where subscriptions may deliver (`--subscriber-allow`, `PUBSUBPULL_SUBSCRIBER_ALLOW`): a
//! comma-separated list of host patterns and URL prefixes, checked when a subscription is defined.
//!
//! - `hooks.example.com`: that host, any port, http or https;
//! - `*.example.com`: its subdomains (not `example.com` itself);
//! - `hooks.example.com:8443`, `10.0.0.5:8080`, `[fd00::5]:80`: that host on that port only;
//! - `https://hooks.example.com/pubsubpull/`: URLs under that prefix: same scheme, host and
//!   (effective) port, and a path that continues the prefix's at a `/` (so `/in` admits `/in` and
//!   `/in/x`, not `/inbox`).
//!
//! Hosts compare as the URL standard normalizes them (case, IDNA, IPv4 forms), so a host written
//! differently (`HOOKS.Example.com`, `0x0a.0.0.5`) is still the same host, and a user name before
//! an `@` is no host at all. Unset, any http or https URL is allowed.

use std::fmt;
use std::str::FromStr;

use url::{Host, Url};

/// The allowed subscriber URLs; the default allows every http and https URL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubscriberAllow {
    rules: Vec<Rule>,
    /// The entries as given, for messages.
    entries: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Rule {
    Host { host: Pattern, port: Option<u16> },
    Prefix(Url),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    Exact(Host<String>),
    /// Subdomains of this domain (without the leading dot).
    Under(String),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllowError {
    #[error("the subscriber allowlist is empty: leave it unset to allow any subscriber URL")]
    Empty,
    #[error("{entry:?} is neither a host pattern (host, *.domain, host:port) nor an http(s) URL prefix")]
    Invalid { entry: String },
}

impl SubscriberAllow {
    /// Whether subscriptions may deliver to `url`.
    pub fn allows(&self, url: &Url) -> bool {
        if !matches!(url.scheme(), "http" | "https") {
            return false;
        }
        let Some(host) = url.host() else { return false };
        self.rules.is_empty() || self.rules.iter().any(|rule| rule.allows(url, &host))
    }

    /// Whether a list was given (else everything is allowed).
    pub fn is_restricted(&self) -> bool {
        !self.rules.is_empty()
    }
}

impl Rule {
    fn allows(&self, url: &Url, host: &Host<&str>) -> bool {
        match self {
            Rule::Host { host: pattern, port } => {
                let host_matches = match (pattern, host) {
                    (Pattern::Exact(allowed), host) => *allowed == host.to_owned(),
                    (Pattern::Under(domain), Host::Domain(name)) => name
                        .strip_suffix(domain.as_str())
                        .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
                    (Pattern::Under(_), _) => false,
                };
                host_matches && port.is_none_or(|port| url.port_or_known_default() == Some(port))
            }
            Rule::Prefix(prefix) => {
                let path = url.path();
                let base = prefix.path();
                prefix.scheme() == url.scheme()
                    && prefix.host() == url.host()
                    && prefix.port_or_known_default() == url.port_or_known_default()
                    && path
                        .strip_prefix(base)
                        .is_some_and(|rest| base.ends_with('/') || rest.is_empty() || rest.starts_with('/'))
            }
        }
    }
}

impl FromStr for SubscriberAllow {
    type Err = AllowError;

    fn from_str(text: &str) -> Result<SubscriberAllow, AllowError> {
        let mut allow = SubscriberAllow::default();
        for entry in text.split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
            allow
                .rules
                .push(parse_rule(entry).ok_or_else(|| AllowError::Invalid { entry: entry.to_owned() })?);
            allow.entries.push(entry.to_owned());
        }
        if allow.rules.is_empty() {
            return Err(AllowError::Empty);
        }
        Ok(allow)
    }
}

fn parse_rule(entry: &str) -> Option<Rule> {
    if entry.contains("://") {
        let url = Url::parse(entry).ok()?;
        let plain = matches!(url.scheme(), "http" | "https")
            && url.host().is_some()
            && url.username().is_empty()
            && url.password().is_none()
            && url.query().is_none()
            && url.fragment().is_none();
        return plain.then_some(Rule::Prefix(url));
    }
    let (under, rest) = match entry.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, entry),
    };
    // The URL parser normalizes the host and port as it will normalize subscribers' URLs.
    let url = Url::parse(&format!("http://{rest}/")).ok()?;
    let explicit_port = url.port().or_else(|| rest.ends_with(":80").then_some(80));
    if url.path() != "/" || !url.username().is_empty() || url.query().is_some() {
        return None;
    }
    let host = match (url.host()?, under) {
        (Host::Domain(domain), true) => Pattern::Under(domain.to_owned()),
        (_, true) => return None,
        (host, false) => Pattern::Exact(host.to_owned()),
    };
    Some(Rule::Host { host, port: explicit_port })
}

impl fmt::Display for SubscriberAllow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.entries.is_empty() {
            f.write_str("any http(s) URL")
        } else {
            f.write_str(&self.entries.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(list: &str, url: &str) -> bool {
        list.parse::<SubscriberAllow>().unwrap().allows(&Url::parse(url).unwrap())
    }

    #[test]
    fn unset_allows_any_http_url() {
        let any = SubscriberAllow::default();
        assert!(!any.is_restricted());
        assert!(any.allows(&Url::parse("https://anywhere.example/x").unwrap()));
        assert!(!any.allows(&Url::parse("ftp://anywhere.example/x").unwrap()));
        assert!(!any.allows(&Url::parse("file:///etc/passwd").unwrap()));
    }

    #[test]
    fn host_patterns() {
        let list = "hooks.example.com, *.internal.example, billing:8443, 10.0.0.5:8080, [fd00::5]";
        for good in [
            "https://hooks.example.com/in",
            "http://HOOKS.Example.COM:9000/",
            "https://a.internal.example/",
            "https://a.b.internal.example/x",
            "https://billing:8443/x",
            "http://10.0.0.5:8080/",
            "http://[fd00::5]/",
        ] {
            assert!(allows(list, good), "{good}");
        }
        for bad in [
            "https://internal.example/",
            "https://xinternal.example/",
            "https://hooks.example.com.evil.com/",
            "https://evil.com/hooks.example.com",
            "https://hooks.example.com@evil.com/",
            "https://billing/x",
            "https://billing:8444/x",
            "http://10.0.0.5/",
            "http://10.0.0.6:8080/",
            "http://[fd00::6]/",
        ] {
            assert!(!allows(list, bad), "{bad}");
        }
        // IPv4 written another way is the same address.
        assert!(allows("10.0.0.5:8080", "http://0x0a.0.0.5:8080/"));
        assert!(allows("example.com:80", "http://example.com/"));
        assert!(!allows("example.com:80", "https://example.com/"));
    }

    #[test]
    fn url_prefixes() {
        let list = "https://hooks.example.com/in, http://localhost:9000/a/";
        for good in [
            "https://hooks.example.com/in",
            "https://hooks.example.com/in/x?y=1",
            "https://hooks.example.com:443/in/x",
            "http://localhost:9000/a/b",
        ] {
            assert!(allows(list, good), "{good}");
        }
        for bad in [
            "https://hooks.example.com/inbox",
            "https://hooks.example.com/",
            "http://hooks.example.com/in",
            "https://hooks.example.com:8443/in",
            "https://hooks.example.com.evil.com/in",
            "http://localhost:9001/a/b",
            "http://localhost:9000/a",
        ] {
            assert!(!allows(list, bad), "{bad}");
        }
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        assert_eq!("".parse::<SubscriberAllow>(), Err(AllowError::Empty));
        assert_eq!(" , ".parse::<SubscriberAllow>(), Err(AllowError::Empty));
        for bad in ["ftp://x/", "https://u:p@x/", "https://x/?q=1", "a/b", "*.10.0.0.1", "host:port", "*."] {
            assert!(matches!(bad.parse::<SubscriberAllow>(), Err(AllowError::Invalid { .. })), "{bad}");
        }
        let list: SubscriberAllow = "a.example, https://b.example/x".parse().unwrap();
        assert!(list.is_restricted());
        assert_eq!(list.to_string(), "a.example, https://b.example/x");
    }
}
