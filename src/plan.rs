//! Rule planning: pod settings and addresses in, a typed plan and `iptables-restore` text out.
//!
//! Pure functions only: no I/O, no clock, no environment. Everything a pod can influence enters
//! as a typed value ([`Settings`]); rules are built from those values, never from text.
//!
//! # Chain layout (per address family)
//!
//! ```text
//!  nat
//!  PREROUTING ─ -p tcp ─▶ SHUNT_INBOUND            (REDIRECT mode only; TPROXY uses mangle)
//!                           ├─ -i <exclude-interfaces> ─────────▶ RETURN
//!                           ├─ -s <excluded sources> ───────────▶ RETURN
//!                           ├─ --dport <exclude-inbound-ports> ─▶ RETURN
//!                           └─ --dport <include-inbound-ports> ─▶ SHUNT_IN_REDIRECT ─▶ REDIRECT :inbound
//!                                                                 ▲
//!  OUTPUT ──── -p tcp ─▶ SHUNT_OUTPUT                             │
//!                           ├─ -o <exclude-interfaces> ─────────▶ RETURN
//!                           ├─ --dport <exclude-outbound-ports> ▶ RETURN
//!                           ├─ -s <passthrough> -o lo ──────────▶ RETURN   (Istio: 127.0.0.6, ::6)
//!                           ├─ -o lo, mark <tproxy> ────────────▶ RETURN   (TPROXY only)
//!                           ├─ --dport 53, proxy ───────────────▶ RETURN   ┐ DNS capture
//!                           ├─ --dport 53 ──────────────────────▶ REDIRECT ┘ :dns
//!                           ├─ -o lo -d <own|non-localhost>, proxy ─▶ SHUNT_INBOUND (proxy → own pod
//!                           │                                                  is inbound traffic)
//!                           ├─ proxy uid, proxy gid ────────────▶ RETURN
//!                           ├─ -o lo ───────────────────────────▶ RETURN
//!                           ├─ -d <exclude-outbound-cidrs> ─────▶ RETURN
//!                           ├─ --dport <include-outbound-ports> ▶ SHUNT_OUT_REDIRECT ─▶ REDIRECT :outbound
//!                           └─ -d <include-outbound-cidrs> ─────▶ SHUNT_OUT_REDIRECT
//!  OUTPUT ─ -p udp --dport 53 ─▶ SHUNT_DNS: exclude-interfaces, proxy ▶ RETURN; else ▶ REDIRECT :dns
//!
//!  mangle (TPROXY mode)
//!  PREROUTING ─ -p tcp ─▶ SHUNT_INBOUND
//!                           ├─ mark <tproxy> ─▶ CONNMARK save, RETURN    (the proxy's spoofed-source
//!                           │                                             connections to the app)
//!                           ├─ -i lo, from passthrough or not marked <proxy-to-pod> ─▶ RETURN
//!                           ├─ exclude interfaces, sources, inbound ports ──────────▶ RETURN
//!                           ├─ ESTABLISHED ─▶ SHUNT_DIVERT ─▶ MARK <tproxy>, ACCEPT
//!                           └─ new ─────────▶ SHUNT_TPROXY ─▶ TPROXY :inbound, mark <tproxy>
//!  OUTPUT ──── -p tcp ─▶ SHUNT_OUTPUT: proxy → pod over lo ▶ MARK <proxy-to-pod>;
//!                                      CONNMARK <tproxy> ▶ restore (replies to spoofed sources)
//!  + policy routing: fwmark <tproxy> → table <t>: local default dev lo   (see crate::routing)
//!
//!  raw (DNS capture: separate conntrack zones for the app's and the proxy's DNS flows)
//!  OUTPUT ───── -p udp ─▶ SHUNT_DNS_ZONE:  proxy → :53 zone 1; proxy from :dns zone 2; app → :53 zone 2
//!  PREROUTING ─ -p udp ─▶ SHUNT_DNS_REPLY: from :53 zone 1
//! ```
//!
//! **The chain names are an upgrade contract.** A newer shunt must find and remove what an older
//! one installed, so every chain shunt owns starts with [`OWNED_PREFIX`], and shunt's only rules
//! outside its own chains are jumps into them. Renaming a chain means keeping the old name in
//! [`crate::saved`]'s removal logic for as long as pods created by the old version may exist.
//! The same holds for the routing protocol tag in [`crate::routing`].
//!
//! Rules are rendered token for token as `iptables-save` prints them (`-s`, `-d`, `-i`, `-o`,
//! `-p`, then the matches, the `-m tcp` that `--dport` implies, host bits cleared, marks in hex),
//! so that CHECK can compare the plan with the saved state as plain lines.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

use crate::settings::{
    port, Interception, Port, PortRange, ProxyLoopback, Select, Settings, TproxyMarks,
};

/// Prefix of every chain shunt creates; see the module docs.
pub const OWNED_PREFIX: &str = "SHUNT_";

const DNS: Port = port(53);
/// Conntrack zones of the proxy's upstream DNS flows and of the app's captured ones.
const ZONE_PROXY: u16 = 1;
const ZONE_APP: u16 = 2;

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

    fn localhost(self) -> IpNetwork {
        match self {
            Family::V4 => IpNetwork::from(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            Family::V6 => IpNetwork::from(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        }
    }

    fn unspecified(self) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Nat,
    Mangle,
    Raw,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Nat => "nat",
            Table::Mangle => "mangle",
            Table::Raw => "raw",
        }
    }
}

/// Chains shunt writes to: the built-in hooks and the chains it owns. A name may exist in more
/// than one table; each table's chains are separate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Chain {
    Prerouting,
    Output,
    Inbound,
    InRedirect,
    Outbound,
    OutRedirect,
    Dns,
    Divert,
    Tproxy,
    DnsZone,
    DnsReply,
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
            Chain::Dns => "SHUNT_DNS",
            Chain::Divert => "SHUNT_DIVERT",
            Chain::Tproxy => "SHUNT_TPROXY",
            Chain::DnsZone => "SHUNT_DNS_ZONE",
            Chain::DnsReply => "SHUNT_DNS_REPLY",
        }
    }

    pub fn is_owned(self) -> bool {
        self.name().starts_with(OWNED_PREFIX)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Uid(u32),
    Gid(u32),
}

/// The proxy's identities: its UID, and its GID when it has one.
fn proxy(s: &Settings) -> Vec<Owner> {
    let mut o = vec![Owner::Uid(s.proxy_uid)];
    o.extend(s.proxy_gid.map(Owner::Gid));
    o
}

/// A match after the addresses, interfaces and protocol; the bool negates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Match {
    Dport(PortRange, bool),
    Sport(Port),
    Owner(Owner, bool),
    Mark(u32, bool),
    Connmark(u32),
    Established,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Jump(Chain),
    Return,
    Accept,
    Redirect(Port),
    Tproxy {
        port: Port,
        on_ip: IpAddr,
        mark: u32,
    },
    SetMark(u32),
    SaveMark,
    RestoreMark,
    CtZone(u16),
}

/// One rule, as typed values. Rendering puts them in `iptables-save` order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spec {
    src: Option<IpNetwork>,
    dst: Option<(IpNetwork, bool)>,
    in_if: Option<String>,
    out_if: Option<String>,
    proto: Option<Proto>,
    matches: Vec<Match>,
    target: Target,
}

fn to(target: Target) -> Spec {
    Spec {
        src: None,
        dst: None,
        in_if: None,
        out_if: None,
        proto: None,
        matches: Vec::new(),
        target,
    }
}

impl Spec {
    fn tcp(mut self) -> Spec {
        self.proto = Some(Proto::Tcp);
        self
    }
    fn udp(mut self) -> Spec {
        self.proto = Some(Proto::Udp);
        self
    }
    fn src(mut self, net: IpNetwork) -> Spec {
        self.src = Some(net);
        self
    }
    fn dst(mut self, net: IpNetwork) -> Spec {
        self.dst = Some((net, false));
        self
    }
    fn not_dst(mut self, net: IpNetwork) -> Spec {
        self.dst = Some((net, true));
        self
    }
    fn in_if(mut self, name: &str) -> Spec {
        self.in_if = Some(name.to_owned());
        self
    }
    fn out_if(mut self, name: &str) -> Spec {
        self.out_if = Some(name.to_owned());
        self
    }
    fn with(mut self, m: Match) -> Spec {
        self.matches.push(m);
        self
    }
    /// `--dport` needs the protocol's match module; TCP unless UDP was chosen.
    fn dport(self, r: PortRange) -> Spec {
        let s = if self.proto.is_none() {
            self.tcp()
        } else {
            self
        };
        s.with(Match::Dport(r, false))
    }
    fn owner(self, o: Owner) -> Spec {
        self.with(Match::Owner(o, false))
    }

    fn tokens(&self) -> Vec<String> {
        let mut t: Vec<String> = Vec::with_capacity(16);
        let mut push = |items: &[&str]| t.extend(items.iter().map(|s| (*s).to_owned()));
        if let Some(s) = self.src {
            push(&["-s", &s.to_string()]);
        }
        if let Some((d, neg)) = self.dst {
            if neg {
                push(&["!"]);
            }
            push(&["-d", &d.to_string()]);
        }
        if let Some(i) = &self.in_if {
            push(&["-i", i]);
        }
        if let Some(o) = &self.out_if {
            push(&["-o", o]);
        }
        let proto = self.proto.map(Proto::name).unwrap_or("tcp");
        if let Some(p) = self.proto {
            push(&["-p", p.name()]);
        }
        for m in &self.matches {
            let not = |neg: bool, opt: &'static str| if neg { vec!["!", opt] } else { vec![opt] };
            match *m {
                Match::Dport(r, neg) => {
                    push(&["-m", proto]);
                    push(&not(neg, "--dport"));
                    push(&[&r.to_string()]);
                }
                Match::Sport(p) => push(&["-m", proto, "--sport", &p.to_string()]),
                Match::Owner(o, neg) => {
                    let (opt, id) = match o {
                        Owner::Uid(u) => ("--uid-owner", u),
                        Owner::Gid(g) => ("--gid-owner", g),
                    };
                    push(&["-m", "owner"]);
                    push(&not(neg, opt));
                    push(&[&id.to_string()]);
                }
                Match::Mark(mark, neg) => {
                    push(&["-m", "mark"]);
                    push(&not(neg, "--mark"));
                    push(&[&format!("{mark:#x}")]);
                }
                Match::Connmark(mark) => push(&["-m", "connmark", "--mark", &format!("{mark:#x}")]),
                Match::Established => {
                    push(&["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED"])
                }
            }
        }
        const FULL: &str = "0xffffffff";
        match self.target {
            Target::Jump(c) => push(&["-j", c.name()]),
            Target::Return => push(&["-j", "RETURN"]),
            Target::Accept => push(&["-j", "ACCEPT"]),
            Target::Redirect(p) => push(&["-j", "REDIRECT", "--to-ports", &p.to_string()]),
            Target::Tproxy { port, on_ip, mark } => push(&[
                "-j",
                "TPROXY",
                "--on-port",
                &port.to_string(),
                "--on-ip",
                &on_ip.to_string(),
                "--tproxy-mark",
                &format!("{mark:#x}/{FULL}"),
            ]),
            Target::SetMark(mark) => {
                push(&["-j", "MARK", "--set-xmark", &format!("{mark:#x}/{FULL}")])
            }
            Target::SaveMark => push(&[
                "-j",
                "CONNMARK",
                "--save-mark",
                "--nfmask",
                FULL,
                "--ctmask",
                FULL,
            ]),
            Target::RestoreMark => push(&[
                "-j",
                "CONNMARK",
                "--restore-mark",
                "--nfmask",
                FULL,
                "--ctmask",
                FULL,
            ]),
            Target::CtZone(z) => push(&["-j", "CT", "--zone", &z.to_string()]),
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

/// Policy routing for TPROXY: packets carrying `mark` are looked up in `table`, whose only route
/// delivers everything locally (over `lo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalRoute {
    pub mark: u32,
    pub table: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyPlan {
    pub family: Family,
    pub tables: Vec<TablePlan>,
    pub route: Option<LocalRoute>,
}

impl FamilyPlan {
    pub fn rule_count(&self) -> usize {
        self.tables.iter().map(|t| t.rules.len()).sum()
    }
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
        self.families.iter().map(FamilyPlan::rule_count).sum()
    }

    /// The policy routing each family needs (TPROXY only).
    pub fn routes(&self) -> Vec<(Family, LocalRoute)> {
        self.families
            .iter()
            .filter_map(|f| f.route.map(|r| (f.family, r)))
            .collect()
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
        if own.is_empty() {
            continue;
        }
        let f = Planner::new(settings, family, &own);
        let mut tables = vec![f.nat()];
        let mut route = None;
        if settings.interception == Interception::Tproxy {
            tables.push(f.mangle(settings.tproxy));
            route = Some(LocalRoute {
                mark: settings.tproxy.mark,
                table: settings.tproxy.table,
            });
        }
        if f.dns.is_some() {
            tables.push(f.raw());
        }
        families.push(FamilyPlan {
            family,
            tables,
            route,
        });
    }
    Plan { families }
}

/// One family's view of the settings.
struct Planner<'a> {
    s: &'a Settings,
    family: Family,
    own: &'a [IpAddr],
    /// DNS listener port, unless DNS is not captured or port 53 is excluded outright.
    dns: Option<Port>,
    inbound_captured: bool,
}

/// Rules for one table, appended in order.
struct Builder {
    rules: Vec<Rule>,
}

impl Builder {
    fn add(&mut self, chain: Chain, spec: Spec) {
        self.rules.push(Rule {
            chain,
            args: spec.tokens(),
        });
    }
}

impl<'a> Planner<'a> {
    fn new(s: &'a Settings, family: Family, own: &'a [IpAddr]) -> Planner<'a> {
        let dns = s
            .dns_port
            .filter(|_| !s.exclude_outbound_ports.iter().any(|r| r.contains(DNS)));
        let inbound_captured = match &s.include_inbound_ports {
            Select::All => true,
            Select::Only(p) => !p.is_empty(),
        };
        Planner {
            s,
            family,
            own,
            dns,
            inbound_captured,
        }
    }

    fn nets(&self, nets: &[IpNetwork]) -> Vec<IpNetwork> {
        nets.iter()
            .copied()
            .filter(|n| Family::of_net(n) == self.family)
            .collect()
    }

    fn passthrough(&self) -> Vec<IpNetwork> {
        self.s
            .passthrough_sources
            .iter()
            .filter(|ip| Family::of(ip) == self.family)
            .map(|ip| IpNetwork::from(*ip))
            .collect()
    }

    /// Where the proxy's own connections over `lo` count as inbound traffic.
    fn proxy_to_pod(&self) -> Vec<Spec> {
        let base = to(Target::Return).out_if("lo");
        match self.s.proxy_loopback {
            ProxyLoopback::Direct => Vec::new(),
            ProxyLoopback::OwnAddresses => self
                .own
                .iter()
                .map(|ip| base.clone().dst(IpNetwork::from(*ip)))
                .collect(),
            ProxyLoopback::NonLocalhost => vec![base.not_dst(self.family.localhost())],
        }
    }

    /// The exclusions every inbound path shares: interfaces, sources, ports.
    fn inbound_exclusions(&self, b: &mut Builder, chain: Chain) {
        for i in &self.s.exclude_interfaces {
            b.add(chain, to(Target::Return).in_if(i.as_str()));
        }
        for net in self.nets(&self.s.exclude_inbound_sources) {
            b.add(chain, to(Target::Return).src(net));
        }
        for &r in &self.s.exclude_inbound_ports {
            b.add(chain, to(Target::Return).dport(r));
        }
    }

    /// The inbound ports to capture: `None` for all.
    fn included_inbound(&self) -> Vec<Option<PortRange>> {
        match &self.s.include_inbound_ports {
            Select::All => vec![None],
            Select::Only(ports) => ports.iter().map(|&p| Some(p)).collect(),
        }
    }

    fn nat(&self) -> TablePlan {
        let s = self.s;
        let mut b = Builder { rules: Vec::new() };

        // Inbound: exclusions first, so that an excluded port wins over an included one.
        self.inbound_exclusions(&mut b, Chain::Inbound);
        for p in self.included_inbound() {
            let spec = to(Target::Jump(Chain::InRedirect)).tcp();
            b.add(
                Chain::Inbound,
                if let Some(p) = p { spec.dport(p) } else { spec },
            );
        }
        b.add(
            Chain::InRedirect,
            to(Target::Redirect(s.inbound_port)).tcp(),
        );

        // Outbound.
        for i in &s.exclude_interfaces {
            b.add(Chain::Outbound, to(Target::Return).out_if(i.as_str()));
        }
        for &r in &s.exclude_outbound_ports {
            b.add(Chain::Outbound, to(Target::Return).dport(r));
        }
        for src in self.passthrough() {
            b.add(Chain::Outbound, to(Target::Return).src(src).out_if("lo"));
        }
        if s.interception == Interception::Tproxy {
            // The proxy handing a connection to the app with the client's address as source
            // marks it; capturing it again would loop it back into the proxy.
            b.add(
                Chain::Outbound,
                to(Target::Return)
                    .out_if("lo")
                    .tcp()
                    .with(Match::Mark(s.tproxy.mark, false)),
            );
        }
        if let Some(dns) = self.dns {
            for o in proxy(s) {
                b.add(
                    Chain::Outbound,
                    to(Target::Return).dport(PortRange::one(DNS)).owner(o),
                );
            }
            b.add(
                Chain::Outbound,
                to(Target::Redirect(dns)).dport(PortRange::one(DNS)),
            );
        }
        // The proxy reaching its own pod over lo is the second half of an app calling a service
        // that resolves back to this pod: it gets inbound policy, as if from outside.
        if self.inbound_captured {
            for spec in self.proxy_to_pod() {
                for o in proxy(s) {
                    let mut spec = spec.clone().owner(o);
                    spec.target = Target::Jump(Chain::Inbound);
                    b.add(Chain::Outbound, spec);
                }
            }
        }
        for o in proxy(s) {
            b.add(Chain::Outbound, to(Target::Return).owner(o));
        }
        b.add(Chain::Outbound, to(Target::Return).out_if("lo"));
        for net in self.nets(&s.exclude_outbound_cidrs) {
            b.add(Chain::Outbound, to(Target::Return).dst(net));
        }
        for &r in &s.include_outbound_ports {
            b.add(
                Chain::Outbound,
                to(Target::Jump(Chain::OutRedirect)).dport(r),
            );
        }
        match &s.include_outbound_cidrs {
            Select::All => b.add(Chain::Outbound, to(Target::Jump(Chain::OutRedirect))),
            Select::Only(nets) => {
                for net in self.nets(nets) {
                    b.add(
                        Chain::Outbound,
                        to(Target::Jump(Chain::OutRedirect)).dst(net),
                    );
                }
            }
        }
        b.add(
            Chain::OutRedirect,
            to(Target::Redirect(s.outbound_port)).tcp(),
        );

        let mut chains = vec![
            Chain::Inbound,
            Chain::InRedirect,
            Chain::Outbound,
            Chain::OutRedirect,
        ];
        if let Some(dns) = self.dns {
            chains.push(Chain::Dns);
            for i in &s.exclude_interfaces {
                b.add(Chain::Dns, to(Target::Return).out_if(i.as_str()));
            }
            for o in proxy(s) {
                b.add(Chain::Dns, to(Target::Return).owner(o));
            }
            b.add(Chain::Dns, to(Target::Redirect(dns)).udp());
        }

        // Hooks last: by the time traffic can enter the owned chains they are complete. (The
        // restore is one transaction anyway; this keeps the text readable in that order too.)
        if s.interception == Interception::Redirect {
            b.add(Chain::Prerouting, to(Target::Jump(Chain::Inbound)).tcp());
        }
        b.add(Chain::Output, to(Target::Jump(Chain::Outbound)).tcp());
        if self.dns.is_some() {
            b.add(
                Chain::Output,
                to(Target::Jump(Chain::Dns))
                    .udp()
                    .dport(PortRange::one(DNS)),
            );
        }
        TablePlan {
            table: Table::Nat,
            chains,
            rules: b.rules,
        }
    }

    fn mangle(&self, marks: TproxyMarks) -> TablePlan {
        let s = self.s;
        let mut b = Builder { rules: Vec::new() };
        let marked = Match::Mark(marks.mark, false);

        // Packets the proxy sent with the TPROXY mark (its connections to the app that keep the
        // client's address as source): remember the mark on the connection, so the app's
        // replies can be routed back to the proxy, and leave them alone.
        b.add(Chain::Inbound, to(Target::SaveMark).tcp().with(marked));
        b.add(Chain::Inbound, to(Target::Return).tcp().with(marked));
        for src in self.passthrough() {
            b.add(
                Chain::Inbound,
                to(Target::Return).src(src).in_if("lo").tcp(),
            );
        }
        // Local traffic is only diverted when the proxy sent it to its own pod.
        b.add(
            Chain::Inbound,
            to(Target::Return)
                .in_if("lo")
                .tcp()
                .with(Match::Mark(marks.outbound_mark, true)),
        );
        self.inbound_exclusions(&mut b, Chain::Inbound);
        for p in self.included_inbound() {
            let port = |spec: Spec| if let Some(p) = p { spec.dport(p) } else { spec };
            b.add(
                Chain::Inbound,
                port(to(Target::Jump(Chain::Divert)).tcp()).with(Match::Established),
            );
            b.add(Chain::Inbound, port(to(Target::Jump(Chain::Tproxy)).tcp()));
        }
        b.add(Chain::Divert, to(Target::SetMark(marks.mark)));
        b.add(Chain::Divert, to(Target::Accept));
        b.add(
            Chain::Tproxy,
            to(Target::Tproxy {
                port: s.inbound_port,
                on_ip: self.family.unspecified(),
                mark: marks.mark,
            })
            .not_dst(self.family.localhost())
            .tcp(),
        );

        b.add(
            Chain::Outbound,
            to(Target::Return).out_if("lo").tcp().with(marked),
        );
        for spec in self.proxy_to_pod() {
            for o in proxy(s) {
                let mut spec = spec.clone().tcp().owner(o);
                spec.target = Target::SetMark(marks.outbound_mark);
                b.add(Chain::Outbound, spec);
            }
        }
        b.add(
            Chain::Outbound,
            to(Target::RestoreMark)
                .tcp()
                .with(Match::Connmark(marks.mark)),
        );

        b.add(Chain::Prerouting, to(Target::Jump(Chain::Inbound)).tcp());
        b.add(Chain::Output, to(Target::Jump(Chain::Outbound)).tcp());
        TablePlan {
            table: Table::Mangle,
            chains: vec![
                Chain::Inbound,
                Chain::Divert,
                Chain::Tproxy,
                Chain::Outbound,
            ],
            rules: b.rules,
        }
    }

    /// Conntrack zones keep the app's captured DNS flows apart from the proxy's own upstream
    /// ones, which may share a 5-tuple once NAT has rewritten the app's.
    fn raw(&self) -> TablePlan {
        let mut b = Builder { rules: Vec::new() };
        let dns = self.dns.unwrap_or(DNS);
        for o in proxy(self.s) {
            b.add(
                Chain::DnsZone,
                to(Target::CtZone(ZONE_PROXY))
                    .udp()
                    .dport(PortRange::one(DNS))
                    .owner(o),
            );
            b.add(
                Chain::DnsZone,
                to(Target::CtZone(ZONE_APP))
                    .udp()
                    .with(Match::Sport(dns))
                    .owner(o),
            );
        }
        b.add(
            Chain::DnsZone,
            to(Target::CtZone(ZONE_APP))
                .udp()
                .dport(PortRange::one(DNS)),
        );
        b.add(
            Chain::DnsReply,
            to(Target::CtZone(ZONE_PROXY)).udp().with(Match::Sport(DNS)),
        );
        b.add(Chain::Output, to(Target::Jump(Chain::DnsZone)).udp());
        b.add(Chain::Prerouting, to(Target::Jump(Chain::DnsReply)).udp());
        TablePlan {
            table: Table::Raw,
            chains: vec![Chain::DnsZone, Chain::DnsReply],
            rules: b.rules,
        }
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

/// The policy routing as the `ip` commands that would create it (for people; shunt itself uses
/// netlink).
pub fn render_route(fp: &FamilyPlan) -> Option<String> {
    let r = fp.route?;
    let (flag, all) = match fp.family {
        Family::V4 => ("-4", "0.0.0.0/0"),
        Family::V6 => ("-6", "::/0"),
    };
    Some(format!(
        "ip {flag} rule add fwmark {:#x} lookup {}\nip {flag} route add local {all} dev lo table {}\n",
        r.mark, r.table, r.table
    ))
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

    #[test]
    fn excluding_port_53_turns_dns_capture_off() {
        let s = Settings {
            dns_port: Some(port(15053)),
            exclude_outbound_ports: vec![PortRange {
                first: port(1),
                last: port(1024),
            }],
            ..Settings::default()
        };
        let p = plan(&s, &["192.0.2.10".parse().unwrap()]);
        assert_eq!(p.families[0].tables.len(), 1);
        assert!(!render_create(&p.families[0]).contains("15053"));
    }

    #[test]
    fn tproxy_adds_mangle_and_a_route() {
        let s = Settings {
            interception: Interception::Tproxy,
            ..Settings::default()
        };
        let p = plan(&s, &["2001:db8::10".parse().unwrap()]);
        let fp = &p.families[0];
        let text = render_create(fp);
        assert!(
            text.contains("--on-ip :: --tproxy-mark 0x539/0xffffffff"),
            "{text}"
        );
        assert!(!text.contains("-A PREROUTING -p tcp -j SHUNT_INBOUND\nCOMMIT\n*mangle"));
        assert_eq!(
            render_route(fp).unwrap(),
            "ip -6 rule add fwmark 0x539 lookup 133\nip -6 route add local ::/0 dev lo table 133\n"
        );
    }
}
