//! Policy routing for TPROXY inside the pod netns, over rtnetlink: the fwmark rule and the
//! `local` default route of its table, per address family.
//!
//! Everything shunt adds carries the routing protocol [`PROTOCOL`], which is how DEL and CHECK
//! find it again without knowing the pod's settings: like the chain prefix in [`crate::plan`],
//! this number is an upgrade contract. Call every function here from a thread already inside
//! the pod netns: the netlink socket belongs to the netns it is opened in.

use std::net::{Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::route::{
    RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

use crate::plan::{Family, LocalRoute};

/// `proto 83` in `ip rule` / `ip route` output: shunt's mark on what it adds.
pub const PROTOCOL: u8 = 83;
/// The kernel gives loopback this index in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;
const EEXIST: i32 = 17;
const ENOENT: i32 = 2;
const ESRCH: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        source: rtnetlink::Error,
    },
    #[error("netlink setup: {0}")]
    Setup(std::io::Error),
}

/// One policy-routing object shunt owns, as found in the netns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owned {
    Rule {
        family: Family,
        mark: u32,
        table: u32,
    },
    Route {
        family: Family,
        table: u32,
    },
}

impl std::fmt::Display for Owned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let flag = |fam: &Family| if *fam == Family::V4 { "-4" } else { "-6" };
        match self {
            Owned::Rule {
                family,
                mark,
                table,
            } => write!(
                f,
                "ip {} rule: fwmark {mark:#x} lookup {table} proto {PROTOCOL}",
                flag(family)
            ),
            Owned::Route { family, table } => {
                let all = if *family == Family::V4 {
                    "0.0.0.0/0"
                } else {
                    "::/0"
                };
                write!(
                    f,
                    "ip {} route: local {all} dev lo table {table} proto {PROTOCOL}",
                    flag(family)
                )
            }
        }
    }
}

impl Owned {
    fn wanted(family: Family, r: LocalRoute) -> [Owned; 2] {
        [
            Owned::Rule {
                family,
                mark: r.mark,
                table: r.table,
            },
            Owned::Route {
                family,
                table: r.table,
            },
        ]
    }
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> RoutingError {
    let what = what.into();
    move |source| RoutingError::Netlink { what, source }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// Runs `work` with a netlink handle on a runtime of its own.
fn with_handle<T>(
    work: impl AsyncFnOnce(Handle) -> Result<T, RoutingError>,
) -> Result<T, RoutingError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(RoutingError::Setup)?;
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(RoutingError::Setup)?;
        let conn = tokio::spawn(conn);
        let out = work(handle).await;
        conn.abort();
        out
    })
}

fn ours(p: RouteProtocol) -> bool {
    u8::from(p) == PROTOCOL
}

fn rule_table(m: &RuleMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

fn route_table(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

fn family_of(af: AddressFamily) -> Family {
    if af == AddressFamily::Inet6 {
        Family::V6
    } else {
        Family::V4
    }
}

/// Rules and routes carrying [`PROTOCOL`], with the messages that delete them.
async fn dump(h: &Handle) -> Result<Vec<(Owned, Deletion)>, RoutingError> {
    let mut out = Vec::new();
    for v in [IpVersion::V4, IpVersion::V6] {
        let mut rules = h.rule().get(v.clone()).execute();
        while let Some(m) = rules.try_next().await.map_err(nl("listing ip rules"))? {
            let tagged = m
                .attributes
                .iter()
                .any(|a| matches!(a, RuleAttribute::Protocol(p) if ours(*p)));
            if !tagged {
                continue;
            }
            let mark = m
                .attributes
                .iter()
                .find_map(|a| match a {
                    RuleAttribute::FwMark(x) => Some(*x),
                    _ => None,
                })
                .unwrap_or(0);
            let owned = Owned::Rule {
                family: family_of(m.header.family),
                mark,
                table: rule_table(&m),
            };
            out.push((owned, Deletion::Rule(m)));
        }
        let all = match v {
            IpVersion::V4 => RouteMessageBuilder::<Ipv4Addr>::new().build(),
            IpVersion::V6 => RouteMessageBuilder::<Ipv6Addr>::new().build(),
        };
        let mut routes = h.route().get(all).execute();
        while let Some(m) = routes.try_next().await.map_err(nl("listing routes"))? {
            if !ours(m.header.protocol) {
                continue;
            }
            let owned = Owned::Route {
                family: family_of(m.header.address_family),
                table: route_table(&m),
            };
            out.push((owned, Deletion::Route(m)));
        }
    }
    Ok(out)
}

enum Deletion {
    Rule(RuleMessage),
    Route(RouteMessage),
}

/// Adds the rule and route for each family. Existing identical ones are fine: ADD may repeat.
pub fn install(routes: &[(Family, LocalRoute)]) -> Result<(), RoutingError> {
    with_handle(async |h: Handle| {
        for &(family, r) in routes {
            let mut add = h
                .rule()
                .add()
                .fw_mark(r.mark)
                .table_id(r.table)
                .action(RuleAction::ToTable);
            add.message_mut()
                .attributes
                .push(RuleAttribute::Protocol(RouteProtocol::from(PROTOCOL)));
            add.message_mut().header.family = match family {
                Family::V4 => AddressFamily::Inet,
                Family::V6 => AddressFamily::Inet6,
            };
            let what = format!("adding {}", Owned::wanted(family, r)[0]);
            match add.execute().await {
                Err(e) if errno(&e) == Some(EEXIST) => {}
                other => other.map_err(nl(what))?,
            }
            let route = match family {
                Family::V4 => RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
                    .output_interface(LOOPBACK_IFINDEX)
                    .table_id(r.table)
                    .kind(RouteType::Local)
                    .scope(RouteScope::Host)
                    .protocol(RouteProtocol::from(PROTOCOL))
                    .build(),
                Family::V6 => RouteMessageBuilder::<Ipv6Addr>::new()
                    .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
                    .output_interface(LOOPBACK_IFINDEX)
                    .table_id(r.table)
                    .kind(RouteType::Local)
                    .scope(RouteScope::Host)
                    .protocol(RouteProtocol::from(PROTOCOL))
                    .build(),
            };
            let what = format!("adding {}", Owned::wanted(family, r)[1]);
            match h.route().add(route).execute().await {
                Err(e) if errno(&e) == Some(EEXIST) => {}
                other => other.map_err(nl(what))?,
            }
        }
        Ok(())
    })
}

/// Removes every rule and route shunt added, whatever settings created them. Returns how many.
pub fn remove_all() -> Result<usize, RoutingError> {
    with_handle(async |h: Handle| {
        let found = dump(&h).await?;
        let n = found.len();
        for (owned, deletion) in found {
            let what = format!("removing {owned}");
            let r = match deletion {
                Deletion::Rule(m) => h.rule().del(m).execute().await,
                Deletion::Route(m) => h.route().del(m).execute().await,
            };
            match r {
                // Gone already (a route goes with its table's last rule on some kernels).
                Err(e) if matches!(errno(&e), Some(ENOENT | ESRCH)) => {}
                other => other.map_err(nl(what))?,
            }
        }
        Ok(n)
    })
}

/// What shunt owns in the netns's policy routing.
pub fn list() -> Result<Vec<Owned>, RoutingError> {
    with_handle(async |h: Handle| Ok(dump(&h).await?.into_iter().map(|(o, _)| o).collect()))
}

impl Owned {
    pub fn family(&self) -> Family {
        match self {
            Owned::Rule { family, .. } | Owned::Route { family, .. } => *family,
        }
    }
}

/// Differences between `want` and the netns: missing and unexpected objects, described.
pub fn diff(want: &[(Family, LocalRoute)], have: &[Owned]) -> Vec<(Family, String)> {
    let wanted: Vec<Owned> = want
        .iter()
        .flat_map(|&(f, r)| Owned::wanted(f, r))
        .collect();
    let mut out: Vec<(Family, String)> = wanted
        .iter()
        .filter(|w| !have.contains(w))
        .map(|w| (w.family(), format!("missing {w}")))
        .collect();
    out.extend(
        have.iter()
            .filter(|h| !wanted.contains(h))
            .map(|h| (h.family(), format!("unexpected {h}"))),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_names_missing_and_unexpected() {
        let r = LocalRoute {
            mark: 0x539,
            table: 133,
        };
        let want = [(Family::V4, r)];
        assert!(diff(&want, &Owned::wanted(Family::V4, r)).is_empty());
        let d = diff(&want, &[Owned::wanted(Family::V4, r)[0].clone()]);
        assert_eq!(
            d,
            [(
                Family::V4,
                "missing ip -4 route: local 0.0.0.0/0 dev lo table 133 proto 83".to_string()
            )]
        );
        let d = diff(&[], &Owned::wanted(Family::V6, r));
        assert_eq!(d.len(), 2);
        assert!(d[0]
            .1
            .starts_with("unexpected ip -6 rule: fwmark 0x539 lookup 133"));
    }
}
