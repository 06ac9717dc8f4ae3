//! Pod settings: the typed values the planner takes, and the parsers every profile uses to turn
//! annotation text into them.
//!
//! Every value a pod can set is parsed into ports, port ranges, CIDRs, interface names and
//! numeric IDs before planning. The planner only ever sees these types, so no annotation text can
//! reach `iptables-restore` input. Which annotations a pod uses is up to its profile (see
//! [`crate::profiles`]); they all end up here.

use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU16;

use ipnetwork::IpNetwork;

/// Longest annotation value read. Longer values are refused rather than truncated.
pub const MAX_VALUE_LEN: usize = 8192;
/// Most entries in one list; each becomes at least one rule per address family.
pub const MAX_LIST_ITEMS: usize = 128;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("{field} = {value}: {why}")]
    Invalid {
        field: String,
        value: Shown,
        why: String,
    },
    #[error("pod {pod} carries no annotations from the runtime: add \"capabilities\": {{\"io.kubernetes.cri.pod-annotations\": true}} to shunt's conflist entry (needs containerd ≥1.5 or CRI-O ≥1.29)")]
    NoAnnotations { pod: String },
}

impl SettingsError {
    pub fn invalid(field: impl Into<String>, raw: &str, why: impl Into<String>) -> SettingsError {
        SettingsError::Invalid {
            field: field.into(),
            value: Shown::new(raw),
            why: why.into(),
        }
    }
}

/// A value as it may be shown in an error: quoted, escaped, and cut short when huge, so that a
/// hostile annotation can neither flood the logs nor break their lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown(String);

impl Shown {
    pub fn new(raw: &str) -> Shown {
        const KEEP: usize = 80;
        if raw.chars().count() <= KEEP {
            return Shown(format!("{raw:?}"));
        }
        let head: String = raw.chars().take(KEEP).collect();
        Shown(format!("{head:?}… ({} bytes)", raw.len()))
    }
}

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A TCP or UDP port, 1–65535.
pub type Port = NonZeroU16;

pub const fn port(n: u16) -> Port {
    match NonZeroU16::new(n) {
        Some(p) => p,
        None => panic!("port 0"),
    }
}

/// One port or an inclusive range of ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    pub first: Port,
    pub last: Port,
}

impl PortRange {
    pub const fn one(p: Port) -> PortRange {
        PortRange { first: p, last: p }
    }

    pub fn contains(&self, p: Port) -> bool {
        self.first <= p && p <= self.last
    }
}

impl fmt::Display for PortRange {
    /// As iptables prints it: `80` or `8000:9000`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}:{}", self.first, self.last)
        }
    }
}

/// A network interface name, checked to be one the kernel could have. A trailing `+` is the
/// iptables wildcard (`net+` is every interface starting with `net`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface(String);

impl Iface {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Iface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An include list: everything (`*`), or only the listed items (possibly none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Select<T> {
    All,
    Only(Vec<T>),
}

/// How inbound connections reach the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interception {
    /// nat REDIRECT: the proxy reads the original destination with `SO_ORIGINAL_DST`.
    Redirect,
    /// mangle TPROXY plus policy routing: the proxy's listener (with `IP_TRANSPARENT`) sees the
    /// original destination as its local address, and the source address is kept.
    Tproxy,
}

/// What happens to the proxy's own connections that leave over `lo` for a non-loopback address,
/// which is how a proxy reaches its own pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyLoopback {
    /// Left alone, like all of the proxy's traffic (Linkerd: its proxy serves its own pod).
    Direct,
    /// To one of the pod's own addresses: through inbound capture, as if from outside (shunt).
    OwnAddresses,
    /// To any address but 127.0.0.1/::1: through inbound capture (Istio, whose inbound
    /// validation and passthrough rely on it).
    NonLocalhost,
}

impl Interception {
    pub fn name(self) -> &'static str {
        match self {
            Interception::Redirect => "REDIRECT",
            Interception::Tproxy => "TPROXY",
        }
    }
}

/// Marks and routing table used by TPROXY interception.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TproxyMarks {
    /// Set on diverted packets; routed to `lo` by the policy rule.
    pub mark: u32,
    /// Set on the proxy's own packets to the pod over `lo`, so they may be diverted.
    pub outbound_mark: u32,
    /// The routing table holding the `local` default route.
    pub table: u32,
}

/// What shunt programs for one pod that asked to be captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub interception: Interception,
    pub outbound_port: Port,
    pub inbound_port: Port,
    pub proxy_uid: u32,
    /// `None`: the proxy is recognised by its UID alone.
    pub proxy_gid: Option<u32>,
    pub include_outbound_cidrs: Select<IpNetwork>,
    pub exclude_outbound_cidrs: Vec<IpNetwork>,
    /// Redirected whatever their destination address (after the exclusions).
    pub include_outbound_ports: Vec<PortRange>,
    pub exclude_outbound_ports: Vec<PortRange>,
    pub include_inbound_ports: Select<PortRange>,
    pub exclude_inbound_ports: Vec<PortRange>,
    /// Inbound connections from these sources go straight to the app.
    pub exclude_inbound_sources: Vec<IpNetwork>,
    /// Traffic in or out through these interfaces is never captured.
    pub exclude_interfaces: Vec<Iface>,
    /// The proxy connects from these addresses to reach the app directly (Istio's inbound
    /// passthrough binds 127.0.0.6 and ::6); such connections are never captured.
    pub passthrough_sources: Vec<IpAddr>,
    pub proxy_loopback: ProxyLoopback,
    /// Port of the proxy's DNS listener when the app's DNS (UDP and TCP port 53) is captured.
    pub dns_port: Option<Port>,
    pub tproxy: TproxyMarks,
}

impl Default for Settings {
    /// shunt's own defaults, which are Istio's ports and IDs.
    fn default() -> Settings {
        Settings {
            interception: Interception::Redirect,
            outbound_port: port(15001),
            inbound_port: port(15006),
            proxy_uid: 1337,
            proxy_gid: Some(1337),
            include_outbound_cidrs: Select::All,
            exclude_outbound_cidrs: Vec::new(),
            include_outbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            include_inbound_ports: Select::All,
            exclude_inbound_ports: Vec::new(),
            exclude_inbound_sources: Vec::new(),
            exclude_interfaces: Vec::new(),
            passthrough_sources: Vec::new(),
            proxy_loopback: ProxyLoopback::OwnAddresses,
            dns_port: None,
            tproxy: TproxyMarks {
                mark: 1337,
                outbound_mark: 1338,
                table: 133,
            },
        }
    }
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "none".into();
    }
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn select<T: fmt::Display>(s: &Select<T>) -> String {
    match s {
        Select::All => "all".into(),
        Select::Only(items) => list(items),
    }
}

impl fmt::Display for Settings {
    /// One `name: value` line per setting, for `shunt plan` and the logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.interception {
            Interception::Redirect => self.interception.name().to_owned(),
            Interception::Tproxy => format!(
                "{} (mark {:#x}, proxy-to-pod mark {:#x}, route table {})",
                self.interception.name(),
                self.tproxy.mark,
                self.tproxy.outbound_mark,
                self.tproxy.table
            ),
        };
        let gid = self
            .proxy_gid
            .map_or_else(|| "none (UID only)".into(), |g| g.to_string());
        let lo = match self.proxy_loopback {
            ProxyLoopback::Direct => "direct",
            ProxyLoopback::OwnAddresses => "to own pod addresses: inbound capture",
            ProxyLoopback::NonLocalhost => "to any non-localhost address: inbound capture",
        };
        let dns = self
            .dns_port
            .map_or_else(|| "not captured".into(), |p| format!("port 53 → {p}"));
        writeln!(f, "interception:           {mode}")?;
        writeln!(f, "outbound port:          {}", self.outbound_port)?;
        writeln!(f, "inbound port:           {}", self.inbound_port)?;
        writeln!(f, "proxy uid:              {}", self.proxy_uid)?;
        writeln!(f, "proxy gid:              {gid}")?;
        writeln!(
            f,
            "include outbound cidrs: {}",
            select(&self.include_outbound_cidrs)
        )?;
        writeln!(
            f,
            "exclude outbound cidrs: {}",
            list(&self.exclude_outbound_cidrs)
        )?;
        writeln!(
            f,
            "include outbound ports: {}",
            list(&self.include_outbound_ports)
        )?;
        writeln!(
            f,
            "exclude outbound ports: {}",
            list(&self.exclude_outbound_ports)
        )?;
        writeln!(
            f,
            "include inbound ports:  {}",
            select(&self.include_inbound_ports)
        )?;
        writeln!(
            f,
            "exclude inbound ports:  {}",
            list(&self.exclude_inbound_ports)
        )?;
        writeln!(
            f,
            "exclude inbound from:   {}",
            list(&self.exclude_inbound_sources)
        )?;
        writeln!(
            f,
            "exclude interfaces:     {}",
            list(&self.exclude_interfaces)
        )?;
        writeln!(
            f,
            "passthrough sources:    {}",
            list(&self.passthrough_sources)
        )?;
        writeln!(f, "proxy over lo:          {lo}")?;
        writeln!(f, "dns:                    {dns}")
    }
}

/// Whether and how a pod is captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Leave the pod alone; the reason is for the log.
    PassThrough(String),
    Redirect {
        /// The profile that recognised the pod.
        profile: &'static str,
        settings: Box<Settings>,
    },
}

// ---- Parsers shared by the profiles. Each returns a reason; the caller names the field. ----

/// Runs `parse` on an annotation or config value, refusing huge ones, and names `field` in the
/// error.
pub fn parse_field<T>(
    field: &str,
    raw: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, SettingsError> {
    if raw.len() > MAX_VALUE_LEN {
        return Err(SettingsError::invalid(
            field,
            raw,
            format!("longer than {MAX_VALUE_LEN} bytes"),
        ));
    }
    parse(raw).map_err(|why| SettingsError::invalid(field, raw, why))
}

pub fn parse_port(s: &str) -> Result<Port, String> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not a port number (1-65535)"));
    }
    s.parse::<u16>()
        .ok()
        .and_then(NonZeroU16::new)
        .ok_or_else(|| format!("{s} is not a port number (1-65535)"))
}

/// `80` or `8000-9000` (Linkerd's range syntax).
pub fn parse_port_range(s: &str) -> Result<PortRange, String> {
    match s.split_once('-') {
        None => parse_port(s).map(PortRange::one),
        Some((a, b)) => {
            let (first, last) = (parse_port(a)?, parse_port(b)?);
            if first > last {
                return Err(format!("{s:?} is an empty port range"));
            }
            Ok(PortRange { first, last })
        }
    }
}

pub fn parse_id(s: &str) -> Result<u32, String> {
    let s = s.trim();
    // Numeric only: a name would need an NSS lookup on the node, which can take seconds.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not a numeric ID"));
    }
    match s.parse::<u32>() {
        Ok(id) if id != u32::MAX => Ok(id),
        _ => Err(format!("{s} is out of range (0-4294967294)")),
    }
}

/// A CIDR or a bare address. Host bits are cleared, as iptables would, so the plan matches what
/// `iptables-save` later reports.
pub fn parse_cidr(s: &str) -> Result<IpNetwork, String> {
    let net = if s.contains('/') {
        s.parse::<IpNetwork>()
            .map_err(|_| format!("{s:?} is not an IPv4 or IPv6 CIDR"))?
    } else {
        let ip: IpAddr = s
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 or IPv6 CIDR"))?;
        IpNetwork::from(ip)
    };
    IpNetwork::new(net.network(), net.prefix()).map_err(|e| format!("{s:?}: {e}"))
}

pub fn parse_iface(s: &str) -> Result<Iface, String> {
    let name = s.strip_suffix('+').unwrap_or(s);
    let ok_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@');
    // A leading '-' would read as an option to iptables-restore.
    let starts_well = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric());
    if !starts_well || name.len() > 15 || !name.bytes().all(ok_char) {
        return Err(format!(
            "{s:?} is not an interface name (1-15 of A-Z a-z 0-9 - _ . @, starting with a letter \
             or digit, optionally ending in +)"
        ));
    }
    Ok(Iface(s.to_owned()))
}

/// `true`/`false`, and the other spellings Go's `strconv.ParseBool` takes, since mesh users
/// write annotations for Go programs.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        other => Err(format!("{other:?} is not a boolean (true or false)")),
    }
}

fn items(raw: &str) -> impl Iterator<Item = &str> {
    raw.split(',').map(str::trim)
}

/// A comma-separated list; blanks around items are ignored, duplicates dropped.
pub fn parse_list<T: PartialEq>(
    raw: &str,
    item: fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    if raw.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut out: Vec<T> = Vec::new();
    for part in items(raw) {
        if part.is_empty() {
            return Err("empty item in the list".into());
        }
        if part == "*" {
            return Err("\"*\" is not allowed in this list".into());
        }
        let v = item(part)?;
        if !out.contains(&v) {
            out.push(v);
        }
        if out.len() > MAX_LIST_ITEMS {
            return Err(format!("more than {MAX_LIST_ITEMS} items"));
        }
    }
    Ok(out)
}

/// `*` for everything, else a list as [`parse_list`] reads it.
pub fn parse_select<T: PartialEq>(
    raw: &str,
    item: fn(&str) -> Result<T, String>,
) -> Result<Select<T>, String> {
    if raw.trim() == "*" {
        return Ok(Select::All);
    }
    if items(raw).any(|p| p == "*") {
        return Err("\"*\" must stand alone".into());
    }
    parse_list(raw, item).map(Select::Only)
}

/// Adds `extra` to `list`, keeping the order and dropping duplicates.
pub fn merge<T: PartialEq + Clone>(list: &mut Vec<T>, extra: &[T]) {
    for e in extra {
        if !list.contains(e) {
            list.push(e.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("80").unwrap().to_string(), "80");
        assert_eq!(
            parse_port_range(" 8000-9000").unwrap().to_string(),
            "8000:9000"
        );
        assert!(parse_port_range("9000-8000").is_err());
        assert!(parse_port_range("0-10").is_err());
        assert!(parse_port_range("80-").is_err());
        assert!(parse_port_range("8000:9000").is_err());
    }

    #[test]
    fn interface_names() {
        assert!(parse_iface("net1").is_ok());
        assert!(parse_iface("veth+").is_ok());
        for bad in ["", "+", "a b", "eth0;ls", "sixteen-chars-xx", "a/b", "-j"] {
            assert!(parse_iface(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lists_trim_dedupe_and_normalise() {
        let nets = parse_list(" 10.1.2.3/8 , 2001:db8::1, 10.0.0.0/8", parse_cidr).unwrap();
        assert_eq!(
            nets,
            vec![
                "10.0.0.0/8".parse::<IpNetwork>().unwrap(),
                "2001:db8::1/128".parse().unwrap()
            ]
        );
        assert_eq!(
            parse_select("", parse_port_range).unwrap(),
            Select::Only(vec![])
        );
        assert!(parse_select("*,80", parse_port_range).is_err());
        assert!(parse_list("80,,81", parse_port_range).is_err());
    }

    #[test]
    fn booleans_like_go() {
        assert_eq!(parse_bool("True"), Ok(true));
        assert_eq!(parse_bool("0"), Ok(false));
        assert!(parse_bool("yes").is_err());
    }

    #[test]
    fn huge_values_are_cut_in_messages() {
        let big = "1,".repeat(10_000);
        let e = parse_field("f", &big, |s| parse_list(s, parse_port_range)).unwrap_err();
        assert!(e.to_string().len() < 400);
    }
}
