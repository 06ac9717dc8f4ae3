//! The pod's own IP addresses: from the primary plugin's result, or read from the pod netns over
//! rtnetlink when that result lists none.

use std::net::IpAddr;

use futures_util::TryStreamExt;
use ipnetwork::IpNetwork;
use rtnetlink::packet_route::address::{AddressAttribute, AddressScope};
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum AddrError {
    #[error("prevResult.ips[{index}].address: {value:?} is not an IP address with prefix")]
    BadAddress { index: usize, value: String },
    #[error("prevResult.ips: expected an array of objects")]
    BadIps,
    #[error("reading addresses from the pod netns over netlink: {0}")]
    Netlink(String),
}

/// Addresses listed in `prevResult.ips`, in order, without duplicates. The 0.3/0.4 `version`
/// field is not needed: the address says its family.
pub fn from_prev_result(prev: &Map<String, Value>) -> Result<Vec<IpAddr>, AddrError> {
    let ips = match prev.get("ips") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(AddrError::BadIps),
    };
    let mut out = Vec::new();
    for (index, entry) in ips.iter().enumerate() {
        let Some(raw) = entry.get("address") else {
            return Err(AddrError::BadIps);
        };
        let parsed = raw.as_str().and_then(|s| s.parse::<IpNetwork>().ok());
        let Some(net) = parsed else {
            return Err(AddrError::BadAddress {
                index,
                value: raw.to_string(),
            });
        };
        if !out.contains(&net.ip()) {
            out.push(net.ip());
        }
    }
    Ok(out)
}

/// Global-scope addresses of the netns the calling thread is in. Loopback and link-local
/// addresses have narrower scopes and are left out.
pub fn from_current_netns() -> Result<Vec<IpAddr>, AddrError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| AddrError::Netlink(e.to_string()))?;
    rt.block_on(async {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| AddrError::Netlink(e.to_string()))?;
        let conn = tokio::spawn(conn);
        let mut stream = handle.address().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| AddrError::Netlink(e.to_string()))?
        {
            if msg.header.scope != AddressScope::Universe {
                continue;
            }
            for attr in &msg.attributes {
                if let AddressAttribute::Address(ip) = attr {
                    if !out.contains(ip) {
                        out.push(*ip);
                    }
                }
            }
        }
        conn.abort();
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn prev(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn reads_both_result_shapes() {
        let old =
            prev(json!({"cniVersion":"0.3.1","ips":[{"version":"4","address":"192.0.2.10/24"}]}));
        assert_eq!(
            from_prev_result(&old).unwrap(),
            ["192.0.2.10".parse::<IpAddr>().unwrap()]
        );
        let new = prev(
            json!({"ips":[{"address":"192.0.2.10/24"},{"address":"2001:db8::a/64"},{"address":"192.0.2.10/24"}]}),
        );
        assert_eq!(from_prev_result(&new).unwrap().len(), 2);
        assert!(from_prev_result(&prev(json!({}))).unwrap().is_empty());
    }

    #[test]
    fn bad_addresses_are_named() {
        let e = from_prev_result(&prev(json!({"ips":[{"address":"10.0.0.300/24"}]}))).unwrap_err();
        assert!(e.to_string().contains("ips[0]"), "{e}");
        assert!(from_prev_result(&prev(json!({"ips":"10.0.0.1"}))).is_err());
    }
}
