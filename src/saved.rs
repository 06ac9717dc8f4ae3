//! What `iptables-save` reports of shunt's rules: parsing, comparing with a plan, and the
//! `iptables-restore` text that removes them.
//!
//! Pure functions over text. Ownership is by name (see [`crate::plan`]): chains starting with
//! [`OWNED_PREFIX`], and rules elsewhere that jump or go to them. Anything else in the netns
//! belongs to someone else and is never touched.

use std::fmt;

use crate::plan::{FamilyPlan, OWNED_PREFIX};

/// One table of `iptables-save` output, reduced to what shunt owns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnedTable {
    pub table: String,
    /// Owned chains, in the order they were declared.
    pub chains: Vec<String>,
    /// Rules in owned chains, as printed (`-A CHAIN ...`).
    pub rules: Vec<String>,
    /// Rules in other chains that enter owned ones.
    pub hooks: Vec<String>,
}

impl OwnedTable {
    fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.rules.is_empty() && self.hooks.is_empty()
    }

    fn rules_of<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.rules
            .iter()
            .filter(move |r| rule_chain(r) == Some(chain))
            .map(String::as_str)
    }
}

/// Shunt's part of one family's rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owned {
    pub tables: Vec<OwnedTable>,
}

impl Owned {
    pub fn is_empty(&self) -> bool {
        self.tables.iter().all(OwnedTable::is_empty)
    }
}

fn rule_chain(line: &str) -> Option<&str> {
    let mut t = line.split_ascii_whitespace();
    match (t.next(), t.next()) {
        (Some("-A"), Some(chain)) => Some(chain),
        _ => None,
    }
}

/// Whether a rule's target (`-j`/`-g`) is an owned chain.
fn enters_owned(line: &str) -> bool {
    let mut prev = "";
    for tok in line.split_ascii_whitespace() {
        if (prev == "-j" || prev == "-g") && tok.starts_with(OWNED_PREFIX) {
            return true;
        }
        prev = tok;
    }
    false
}

/// Extracts shunt's part from `iptables-save` output.
pub fn parse(save: &str) -> Owned {
    let mut owned = Owned::default();
    for line in save.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('*') {
            owned.tables.push(OwnedTable {
                table: name.to_owned(),
                ..OwnedTable::default()
            });
            continue;
        }
        let Some(table) = owned.tables.last_mut() else {
            continue;
        };
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_ascii_whitespace().next().unwrap_or("");
            if name.starts_with(OWNED_PREFIX) {
                table.chains.push(name.to_owned());
            }
        } else if let Some(chain) = rule_chain(line) {
            if chain.starts_with(OWNED_PREFIX) {
                table.rules.push(line.to_owned());
            } else if enters_owned(line) {
                table.hooks.push(line.to_owned());
            }
        }
    }
    owned.tables.retain(|t| !t.is_empty());
    owned
}

/// `iptables-restore --noflush` input removing everything shunt owns, or `None` when there is
/// nothing. Hooks go first so the chains are unreferenced when they are deleted.
pub fn render_removal(owned: &Owned) -> Option<String> {
    if owned.is_empty() {
        return None;
    }
    let mut out = String::new();
    for t in &owned.tables {
        out.push('*');
        out.push_str(&t.table);
        out.push('\n');
        for hook in &t.hooks {
            // Delete by exact spec: the saved line with -A turned into -D.
            out.push_str("-D");
            out.push_str(hook.strip_prefix("-A").unwrap_or(hook));
            out.push('\n');
        }
        for verb in ["-F", "-X"] {
            for c in &t.chains {
                out.push_str(verb);
                out.push(' ');
                out.push_str(c);
                out.push('\n');
            }
        }
        out.push_str("COMMIT\n");
    }
    Some(out)
}

/// A difference between the plan and the netns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    MissingChain {
        table: String,
        chain: String,
    },
    Missing {
        table: String,
        rule: String,
    },
    Unexpected {
        table: String,
        rule: String,
    },
    OutOfOrder {
        table: String,
        chain: String,
    },
    Duplicated {
        table: String,
        rule: String,
    },
    /// A difference in TPROXY's policy routing, described by [`crate::routing::diff`].
    Routing(String),
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Drift::MissingChain { table, chain } => write!(f, "missing chain {table}/{chain}"),
            Drift::Missing { table, rule } => write!(f, "missing in {table}: {rule}"),
            Drift::Unexpected { table, rule } => write!(f, "unexpected in {table}: {rule}"),
            Drift::OutOfOrder { table, chain } => {
                write!(f, "rules of {table}/{chain} are out of order")
            }
            Drift::Duplicated { table, rule } => write!(f, "duplicated in {table}: {rule}"),
            Drift::Routing(d) => f.write_str(d),
        }
    }
}

/// Compares what is installed with what the plan wants. Empty means they agree.
pub fn diff(plan: &FamilyPlan, owned: &Owned) -> Vec<Drift> {
    let mut drift = Vec::new();
    let empty = OwnedTable::default();
    for tp in &plan.tables {
        let table = tp.table.name();
        let have = owned
            .tables
            .iter()
            .find(|t| t.table == table)
            .unwrap_or(&empty);
        let t = || table.to_owned();
        for chain in &tp.chains {
            let name = chain.name();
            if !have.chains.iter().any(|c| c == name) {
                drift.push(Drift::MissingChain {
                    table: t(),
                    chain: name.to_owned(),
                });
            }
            let want: Vec<String> = tp
                .rules
                .iter()
                .filter(|r| r.chain == *chain)
                .map(ToString::to_string)
                .collect();
            let got: Vec<&str> = have.rules_of(name).collect();
            let before = drift.len();
            for w in &want {
                if !got.contains(&w.as_str()) {
                    drift.push(Drift::Missing {
                        table: t(),
                        rule: w.clone(),
                    });
                }
            }
            for g in &got {
                if !want.iter().any(|w| w == g) {
                    drift.push(Drift::Unexpected {
                        table: t(),
                        rule: (*g).to_owned(),
                    });
                }
            }
            if drift.len() == before && got.len() != want.len() {
                for w in &want {
                    if got.iter().filter(|g| **g == w).count() > 1 {
                        drift.push(Drift::Duplicated {
                            table: t(),
                            rule: w.clone(),
                        });
                    }
                }
            } else if drift.len() == before && got.iter().zip(&want).any(|(g, w)| *g != w) {
                drift.push(Drift::OutOfOrder {
                    table: t(),
                    chain: name.to_owned(),
                });
            }
        }
        for c in &have.chains {
            if !tp.chains.iter().any(|p| p.name() == c) {
                drift.push(Drift::Unexpected {
                    table: t(),
                    rule: format!(":{c}"),
                });
            }
        }
        let want_hooks: Vec<String> = tp
            .rules
            .iter()
            .filter(|r| !r.chain.is_owned())
            .map(ToString::to_string)
            .collect();
        for w in &want_hooks {
            match have.hooks.iter().filter(|h| *h == w).count() {
                0 => drift.push(Drift::Missing {
                    table: t(),
                    rule: w.clone(),
                }),
                1 => {}
                _ => drift.push(Drift::Duplicated {
                    table: t(),
                    rule: w.clone(),
                }),
            }
        }
        for h in &have.hooks {
            if !want_hooks.contains(h) {
                drift.push(Drift::Unexpected {
                    table: t(),
                    rule: h.clone(),
                });
            }
        }
    }
    for other in &owned.tables {
        if !plan.tables.iter().any(|tp| tp.table.name() == other.table) {
            for c in &other.chains {
                drift.push(Drift::Unexpected {
                    table: other.table.clone(),
                    rule: format!(":{c}"),
                });
            }
        }
    }
    drift
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::plan;
    use crate::settings::Settings;

    const SAVED: &str = "\
# Generated by iptables-nft-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
-A INPUT -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:OTHER_CHAIN - [0:0]
:SHUNT_INBOUND - [0:0]
-A PREROUTING -p tcp -j OTHER_CHAIN
-A PREROUTING -p tcp -j SHUNT_INBOUND
-A OTHER_CHAIN -j RETURN
-A SHUNT_INBOUND -p tcp -j REDIRECT --to-ports 15006
COMMIT
";

    #[test]
    fn only_shunt_is_owned() {
        let o = parse(SAVED);
        assert_eq!(o.tables.len(), 1);
        assert_eq!(o.tables[0].chains, ["SHUNT_INBOUND"]);
        assert_eq!(o.tables[0].hooks, ["-A PREROUTING -p tcp -j SHUNT_INBOUND"]);
        assert_eq!(
            render_removal(&o).unwrap(),
            "*nat\n-D PREROUTING -p tcp -j SHUNT_INBOUND\n-F SHUNT_INBOUND\n-X SHUNT_INBOUND\nCOMMIT\n"
        );
    }

    #[test]
    fn nothing_owned_nothing_to_remove() {
        assert!(render_removal(&parse("*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n")).is_none());
    }

    /// Turns a plan into the text `iptables-save` prints for it.
    fn as_saved(fp: &FamilyPlan) -> String {
        let mut s = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
        for c in &fp.tables[0].chains {
            s += &format!(":{} - [0:0]\n", c.name());
        }
        for r in &fp.tables[0].rules {
            s += &format!("{r}\n");
        }
        s + "COMMIT\n"
    }

    #[test]
    fn plan_round_trips_and_drift_is_named() {
        let p = plan(&Settings::default(), &["192.0.2.10".parse().unwrap()]);
        let fp = &p.families[0];
        let saved = as_saved(fp);
        assert!(diff(fp, &parse(&saved)).is_empty());

        let dropped = saved.replace("-A OUTPUT -p tcp -j SHUNT_OUTPUT\n", "");
        assert_eq!(
            diff(fp, &parse(&dropped)),
            [Drift::Missing {
                table: "nat".into(),
                rule: "-A OUTPUT -p tcp -j SHUNT_OUTPUT".into()
            }]
        );
        let doubled = saved.replace(
            "-A OUTPUT -p tcp -j SHUNT_OUTPUT\n",
            "-A OUTPUT -p tcp -j SHUNT_OUTPUT\n-A OUTPUT -p tcp -j SHUNT_OUTPUT\n",
        );
        assert!(matches!(
            diff(fp, &parse(&doubled))[..],
            [Drift::Duplicated { .. }]
        ));
        let flushed: String = saved
            .lines()
            .filter(|l| !l.starts_with("-A SHUNT_OUT_REDIRECT"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(diff(fp, &parse(&flushed))[0]
            .to_string()
            .contains("-A SHUNT_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001"));
        assert!(!diff(fp, &parse("")).is_empty());
    }
}
