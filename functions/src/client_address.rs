//! The client's address, for the per-address login limits: from the header a trusted gateway
//! sets (`login.client_address_header`, its right-most value: the one the gateway itself
//! added), else the socket peer (the plain server's `ConnectInfo`), else the API Gateway's
//! source IP under Lambda. IPv6 addresses count by their /64, the block one host usually holds.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::request::Parts;
use lambda_http::request::RequestContext;

use crate::state::AppState;

/// Where a request came from, as the limits key it: an IPv4 address, an IPv6 /64, or
/// `unknown` when nothing says (then every such client shares one budget).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddress(pub String);

/// The limits key of `ip`.
pub fn key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// The right-most address of a comma-separated header value (`X-Forwarded-For` style).
fn from_header(value: &str) -> Option<IpAddr> {
    let last = value.rsplit(',').next()?.trim();
    last.parse::<IpAddr>()
        .ok()
        .or_else(|| last.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

fn from_lambda(context: &RequestContext) -> Option<IpAddr> {
    let source = match context {
        RequestContext::ApiGatewayV2(c) => c.http.source_ip.as_deref(),
        RequestContext::ApiGatewayV1(c) => c.identity.source_ip.as_deref(),
        _ => None,
    };
    source.and_then(|s| s.parse().ok())
}

impl<S> FromRequestParts<S> for ClientAddress
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let header = &state.settings.login.client_address_header;
        let trusted = (!header.is_empty())
            .then(|| parts.headers.get(header.as_str()))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(from_header);
        let ip = trusted
            .or_else(|| {
                parts
                    .extensions
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|c| c.0.ip())
            })
            .or_else(|| {
                parts
                    .extensions
                    .get::<RequestContext>()
                    .and_then(from_lambda)
            });
        Ok(ClientAddress(ip.map_or_else(|| "unknown".to_owned(), key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(key(a), key(b));
        assert_ne!(key(a), key(c));
        assert_eq!(key("::ffff:192.0.2.7".parse().unwrap()), "192.0.2.7");
        assert_eq!(key("192.0.2.7".parse().unwrap()), "192.0.2.7");
    }

    #[test]
    fn the_gateways_own_entry_of_a_forwarded_list_counts() {
        assert_eq!(
            from_header("6.6.6.6, 10.0.0.1, 203.0.113.9"),
            Some("203.0.113.9".parse().unwrap())
        );
        assert_eq!(
            from_header("203.0.113.9:4711"),
            Some("203.0.113.9".parse().unwrap())
        );
        assert_eq!(from_header("not an address"), None);
        assert_eq!(from_header(""), None);
    }
}
