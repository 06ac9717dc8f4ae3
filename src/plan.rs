//! Rule planning: pod settings and addresses in, a typed plan and `iptables-restore` text out.
//!
//! Pure functions only: no I/O, no clock, no environment. Everything a pod can influence enters
//! as a typed value ([`Settings`]); rules are built from those values, never from text.
//!
//! # Chain layout (nat table, per address family)
//!
//! ```text
//!  PREROUTING ── -p tcp ──▶ SHUNT_INBOUND
//!                             ├─ --dport <exclude-inbound-ports> ─▶ RETURN
//!                             └─ --dport <include-inbound-ports> ─▶ SHUNT_IN_REDIRECT ─▶ REDIRECT :inbound-port
//!                                                                    ▲
//!  OUTPUT ───── -p tcp ──▶ SHUNT_OUTPUT                              │
//!                             ├─ -o lo -d <pod IP>, proxy uid/gid ──▶ SHUNT_INBOUND  (proxy → own pod IP
//!                             │                                                       is inbound traffic)
//!                             ├─ proxy uid, proxy gid ────────────▶ RETURN
//!                             ├─ -o lo ───────────────────────────▶ RETURN
//!                             ├─ --dport <exclude-outbound-ports> ▶ RETURN
//!                             ├─ -d <exclude-outbound-cidrs> ─────▶ RETURN
//!                             └─ -d <include-outbound-cidrs> ─────▶ SHUNT_OUT_REDIRECT ─▶ REDIRECT :outbound-port
//! ```
//!
//! **The chain names are an upgrade contract.** A newer shunt must find and remove what an older
//! one installed, so every chain shunt owns starts with [`OWNED_PREFIX`], and shunt's only rules
//! outside its own chains are jumps into them. Renaming a chain means keeping the old name in
//! [`crate::saved`]'s removal logic for as long as pods created by the old version may exist.
//!
//! Rules are rendered token for token as `iptables-save` prints them (the order of `-d`, `-o`,
//! `-p`, the `-m tcp` that `--dport` implies, host bits cleared), so that CHECK can compare the
//! plan with the saved state as plain lines.

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::settings::{Port, Select, Settings};

/// Prefix of every chain shunt creates; see the module docs.
pub const OWNED_PREFIX: &str = "SHUNT_";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    fn of_net(net: &IpNetwork) -> Family {
        match net {
            IpNetwork::V4(_) => Family::V4,
            IpNetwork::V6(_) => Family::V6,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Nat,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Nat => "nat",
        }
    }
}

/// Chains shunt writes to: two built-in hooks and the chains it owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Chain {
    Prerouting,
    Output,
    Inbound,
    InRedirect,
    Outbound,
    OutRedirect,
}

impl Chain {
    pub fn name(self) -> &'static str {
        match self {
            Chain::Prerouting => "PREROUTING",
            Chain::Output => "OUTPUT",
            Chain::Inbound => "SHUNT_INBOUND",
            Chain::InRedirect => "SHUNT_IN_REDIRECT",
            Chain::Outbound => "SHUNT_OUTPUT",
            Chain::OutRedirect => "SHUNT_OUT_REDIRECT",
        }
    }

    pub fn is_owned(self) -> bool {
        self.name().starts_with(OWNED_PREFIX)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Uid(u32),
    Gid(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Jump(Chain),
    Return,
    Redirect(Port),
}

/// One rule, as typed values. Rendering puts them in `iptables-save` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Spec {
    dst: Option<IpNetwork>,
    out_lo: bool,
    tcp: bool,
    dport: Option<Port>,
    owner: Option<Owner>,
    target: Target,
}

impl Spec {
    const fn to(target: Target) -> Spec {
        Spec {
            dst: None,
            out_lo: false,
            tcp: false,
            dport: None,
            owner: None,
            target,
        }
    }

    fn tokens(&self) -> Vec<String> {
        let mut t = Vec::with_capacity(12);
        if let Some(d) = self.dst {
            t.extend(["-d".to_owned(), d.to_string()]);
        }
        if self.out_lo {
            t.extend(["-o".into(), "lo".into()]);
        }
        if self.tcp || self.dport.is_some() {
            t.extend(["-p".into(), "tcp".into()]);
        }
        if let Some(p) = self.dport {
            t.extend(["-m".into(), "tcp".into(), "--dport".into(), p.to_string()]);
        }
        match self.owner {
            Some(Owner::Uid(u)) => t.extend([
                "-m".into(),
                "owner".into(),
                "--uid-owner".into(),
                u.to_string(),
            ]),
            Some(Owner::Gid(g)) => t.extend([
                "-m".into(),
                "owner".into(),
                "--gid-owner".into(),
                g.to_string(),
            ]),
            None => {}
        }
        t.push("-j".into());
        match self.target {
            Target::Jump(c) => t.push(c.name().into()),
            Target::Return => t.push("RETURN".into()),
            Target::Redirect(p) => {
                t.extend(["REDIRECT".into(), "--to-ports".into(), p.to_string()])
            }
        }
        t
    }
}

/// A rule appended to `chain`, as argv tokens after `-A <chain>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: Chain,
    pub args: Vec<String>,
}

impl fmt::Display for Rule {
    /// The rule exactly as `iptables-save` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-A {} {}", self.chain.name(), self.args.join(" "))
    }
}

/// What one table holds for one family: the chains shunt creates, then every rule in the order
/// it is appended (owned chains first, the hooks from built-in chains last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePlan {
    pub table: Table,
    pub chains: Vec<Chain>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyPlan {
    pub family: Family,
    pub tables: Vec<TablePlan>,
}

/// Everything shunt installs in one pod netns. Families the pod has no address in are absent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub families: Vec<FamilyPlan>,
}

impl Plan {
    pub fn family(&self, family: Family) -> Option<&FamilyPlan> {
        self.families.iter().find(|f| f.family == family)
    }

    pub fn rule_count(&self) -> usize {
        self.families
            .iter()
            .flat_map(|f| &f.tables)
            .map(|t| t.rules.len())
            .sum()
    }
}

/// Plans the rules for a pod. `pod_ips` are the pod's own addresses; a family gets rules only
/// when the pod has an address in it.
pub fn plan(settings: &Settings, pod_ips: &[IpAddr]) -> Plan {
    let mut families = Vec::new();
    for family in [Family::V4, Family::V6] {
        let own: Vec<IpAddr> = pod_ips
            .iter()
            .copied()
            .filter(|ip| Family::of(ip) == family)
            .collect();
        if !own.is_empty() {
            families.push(FamilyPlan {
                family,
                tables: vec![nat_table(settings, family, &own)],
            });
        }
    }
    Plan { families }
}

fn nat_table(s: &Settings, family: Family, own_ips: &[IpAddr]) -> TablePlan {
    let mut rules = Vec::new();
    let mut add = |chain: Chain, spec: Spec| {
        rules.push(Rule {
            chain,
            args: spec.tokens(),
        })
    };
    let in_family = |nets: &[IpNetwork]| -> Vec<IpNetwork> {
        nets.iter()
            .copied()
            .filter(|n| Family::of_net(n) == family)
            .collect()
    };

    // Inbound: exclusions first, so that an excluded port wins over an included one.
    for &p in &s.exclude_inbound_ports {
        add(
            Chain::Inbound,
            Spec {
                tcp: true,
                dport: Some(p),
                ..Spec::to(Target::Return)
            },
        );
    }
    let inbound_captured = match &s.include_inbound_ports {
        Select::All => {
            add(
                Chain::Inbound,
                Spec {
                    tcp: true,
                    ..Spec::to(Target::Jump(Chain::InRedirect))
                },
            );
            true
        }
        Select::Only(ports) => {
            for &p in ports {
                add(
                    Chain::Inbound,
                    Spec {
                        tcp: true,
                        dport: Some(p),
                        ..Spec::to(Target::Jump(Chain::InRedirect))
                    },
                );
            }
            !ports.is_empty()
        }
    };
    add(
        Chain::InRedirect,
        Spec {
            tcp: true,
            ..Spec::to(Target::Redirect(s.inbound_port))
        },
    );

    // Outbound. The proxy reaching its own pod IP over lo is the second half of an app calling
    // a service that resolves back to this pod: it gets inbound policy, as if from outside.
    if inbound_captured {
        for ip in own_ips {
            for owner in [Owner::Uid(s.proxy_uid), Owner::Gid(s.proxy_gid)] {
                add(
                    Chain::Outbound,
                    Spec {
                        dst: Some(IpNetwork::from(*ip)),
                        out_lo: true,
                        owner: Some(owner),
                        ..Spec::to(Target::Jump(Chain::Inbound))
                    },
                );
            }
        }
    }
    for owner in [Owner::Uid(s.proxy_uid), Owner::Gid(s.proxy_gid)] {
        add(
            Chain::Outbound,
            Spec {
                owner: Some(owner),
                ..Spec::to(Target::Return)
            },
        );
    }
    add(
        Chain::Outbound,
        Spec {
            out_lo: true,
            ..Spec::to(Target::Return)
        },
    );
    for &p in &s.exclude_outbound_ports {
        add(
            Chain::Outbound,
            Spec {
                tcp: true,
                dport: Some(p),
                ..Spec::to(Target::Return)
            },
        );
    }
    for net in in_family(&s.exclude_outbound_cidrs) {
        add(
            Chain::Outbound,
            Spec {
                dst: Some(net),
                ..Spec::to(Target::Return)
            },
        );
    }
    match &s.include_outbound_cidrs {
        Select::All => add(Chain::Outbound, Spec::to(Target::Jump(Chain::OutRedirect))),
        Select::Only(nets) => {
            for net in in_family(nets) {
                add(
                    Chain::Outbound,
                    Spec {
                        dst: Some(net),
                        ..Spec::to(Target::Jump(Chain::OutRedirect))
                    },
                );
            }
        }
    }
    add(
        Chain::OutRedirect,
        Spec {
            tcp: true,
            ..Spec::to(Target::Redirect(s.outbound_port))
        },
    );

    // Hooks last: by the time traffic can enter the owned chains they are complete. (The restore
    // is one transaction anyway; this keeps the text readable in that order too.)
    add(
        Chain::Prerouting,
        Spec {
            tcp: true,
            ..Spec::to(Target::Jump(Chain::Inbound))
        },
    );
    add(
        Chain::Output,
        Spec {
            tcp: true,
            ..Spec::to(Target::Jump(Chain::Outbound))
        },
    );

    TablePlan {
        table: Table::Nat,
        chains: vec![
            Chain::Inbound,
            Chain::InRedirect,
            Chain::Outbound,
            Chain::OutRedirect,
        ],
        rules,
    }
}

/// `iptables-restore --noflush` input that creates the family's rules. It declares its chains
/// with `-N`, which fails when a chain exists: the whole transaction is then rejected, which
/// tells the caller that shunt's rules are already there (see [`crate::apply`]).
pub fn render_create(fp: &FamilyPlan) -> String {
    let mut out = String::with_capacity(1024);
    for t in &fp.tables {
        out.push('*');
        out.push_str(t.table.name());
        out.push('\n');
        for c in &t.chains {
            out.push_str("-N ");
            out.push_str(c.name());
            out.push('\n');
        }
        for r in &t.rules {
            out.push_str(&r.to_string());
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;

    #[test]
    fn no_address_no_rules() {
        assert!(plan(&Settings::default(), &[]).families.is_empty());
    }

    #[test]
    fn hooks_come_last_and_jump_into_owned_chains() {
        let p = plan(&Settings::default(), &["192.0.2.10".parse().unwrap()]);
        let rules = &p.families[0].tables[0].rules;
        let n = rules.len();
        assert_eq!(
            rules[n - 2].to_string(),
            "-A PREROUTING -p tcp -j SHUNT_INBOUND"
        );
        assert_eq!(rules[n - 1].to_string(), "-A OUTPUT -p tcp -j SHUNT_OUTPUT");
        assert!(rules[..n - 2].iter().all(|r| r.chain.is_owned()));
    }

    #[test]
    fn cidrs_go_to_their_family_only() {
        let s = Settings {
            exclude_outbound_cidrs: vec![
                "10.0.0.0/8".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ],
            ..Settings::default()
        };
        let p = plan(
            &s,
            &[
                "192.0.2.10".parse().unwrap(),
                "2001:db8::10".parse().unwrap(),
            ],
        );
        let text = |f: Family| render_create(p.family(f).unwrap());
        assert!(text(Family::V4).contains("-d 10.0.0.0/8 -j RETURN"));
        assert!(!text(Family::V4).contains("fd00::/8"));
        assert!(text(Family::V6).contains("-d fd00::/8 -j RETURN"));
        assert!(!text(Family::V6).contains("10.0.0.0/8"));
    }
}
