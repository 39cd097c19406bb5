//! Reading svcproxy's tables back from the kernel into the IR.
//!
//! A table is read with several dumps (table, chains, sets, each set's elements,
//! rules). To get one consistent picture we read the generation before and after and
//! start over if it moved, or if a dump reports it was interrupted.

use std::collections::HashMap;

use netlink_packet_netfilter::nftables::NfTablesMessageType;
use svcproxy_compiler::nft::ir::{
    BaseChain, Chain, ChainType, Family, KeyValue, Rule, Ruleset, Table,
};

use super::attr::Attrs;
use super::element::{MapEntry, RawElement, elements_to_ir, map_entries};
use super::error::{Error, Result};
use super::expr::Expr;
use super::msg::{Message, POLICY_ACCEPT, hook_from_number};
use super::rule::decode_exprs;
use super::set::SetInfo;
use super::socket::{NftSocket, Reply};
use super::uapi::{chain as ch, elem as el, list, rule as ru, set as st, table as tb};
use super::udata;

const ATTEMPTS: usize = 5;

impl NftSocket {
    /// Reads the named tables (those that exist) and the generation they were read at.
    pub fn read_tables(&mut self, names: &[(Family, &str)]) -> Result<(Ruleset, u32)> {
        for _ in 0..ATTEMPTS {
            let before = self.generation()?;
            let tables = names
                .iter()
                .filter_map(|(family, name)| self.read_table(*family, name).transpose())
                .collect::<Result<Vec<_>>>();
            match tables {
                Ok(tables) if self.generation()? == before => {
                    return Ok((Ruleset { tables }, before));
                }
                Ok(_) | Err(Error::Interrupted) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Interrupted)
    }

    /// Reads one table, or `None` if it does not exist. Not consistent against
    /// concurrent changes on its own; see [`NftSocket::read_tables`].
    pub fn read_table(&mut self, family: Family, name: &str) -> Result<Option<Table>> {
        let Some(reply) = self.get(&Message::get_table(family, name))? else {
            return Ok(None);
        };
        let comment = match reply.attrs()?.get(tb::USERDATA) {
            Some(blob) => udata::parse_comment(blob)?,
            None => None,
        };

        // Sets first: rules need the anonymous ones to decode their lookups.
        let mut sets = Vec::new();
        let mut anon_sets: HashMap<String, Vec<KeyValue>> = HashMap::new();
        for reply in self.dump(&Message::dump_sets(family, name))? {
            let attrs = expect(&reply, NfTablesMessageType::NewSet)?;
            if attrs.string(st::TABLE)?.as_deref() != Some(name) {
                continue;
            }
            let info = SetInfo::from_attrs(family, &attrs)?;
            // The elements of dynamic sets (ClientIP affinity) are the packet path's:
            // the diff never compares them, there is one per client, and the IR has
            // no place for a data map's data. They are not read
            // ([`NftSocket::read_map_entries`] reads one map's).
            let elements = if info.dynamic() {
                Vec::new()
            } else {
                let raw = self.read_elements(family, name, &info.name)?;
                elements_to_ir(&info, raw)?
            };
            if info.anonymous() {
                // Lists of addresses or protocols: one value per element.
                let values = elements
                    .into_iter()
                    .map(
                        |e| match (e.key.as_slice(), e.verdict().is_some(), e.data.is_empty()) {
                            ([value], false, true) => Ok(*value),
                            _ => Err(Error::decode(format!(
                                "anonymous set {} is not a list of single values",
                                info.name
                            ))),
                        },
                    )
                    .collect::<Result<_>>()?;
                anon_sets.insert(info.name, values);
            } else {
                sets.push(info.into_ir(elements));
            }
        }

        let mut chains = Vec::new();
        for reply in self.dump(&Message::dump_chains(family, name))? {
            let attrs = expect(&reply, NfTablesMessageType::NewChain)?;
            if attrs.string(ch::TABLE)?.as_deref() == Some(name) {
                chains.push(chain_from_attrs(&attrs)?);
            }
        }

        let anon = |set: &str| anon_sets.get(set).cloned();
        // One dump per chain: a whole-table rule dump costs the kernel time quadratic
        // in the table's rules (see `Message::dump_chain_rules`).
        for chain in &mut chains {
            let request = Message::dump_chain_rules(family, name, &chain.name);
            let replies = match self.dump(&request) {
                // Deleted since the chain dump: someone is changing the table.
                Err(Error::Request { source, .. })
                    if source.raw_os_error() == Some(libc::ENOENT) =>
                {
                    return Err(Error::Interrupted);
                }
                other => other?,
            };
            for reply in replies {
                let attrs = expect(&reply, NfTablesMessageType::NewRule)?;
                let rule = rule_from_attrs(family, &attrs, &anon).map_err(|e| {
                    Error::decode(format!("rule in chain {name}/{}: {e}", chain.name))
                })?;
                chain.rules.push(rule);
            }
        }

        Ok(Some(Table {
            family,
            name: name.to_string(),
            comment,
            sets,
            chains,
        }))
    }

    /// The elements of one data map (a ClientIP-affinity map: client address to
    /// endpoint), or `None` if the map does not exist. One dump of one set: small
    /// beside reading the table.
    pub fn read_map_entries(
        &mut self,
        family: Family,
        table: &str,
        map: &str,
    ) -> Result<Option<Vec<MapEntry>>> {
        let Some(reply) = self.get(&Message::get_set(family, table, map))? else {
            return Ok(None);
        };
        let info = SetInfo::from_attrs(family, &expect(&reply, NfTablesMessageType::NewSet)?)?;
        let raw = self.read_elements(family, table, map)?;
        map_entries(&info, raw).map(Some)
    }

    fn read_elements(&mut self, family: Family, table: &str, set: &str) -> Result<Vec<RawElement>> {
        let mut raw = Vec::new();
        for reply in self.dump(&Message::dump_elements(family, table, set))? {
            let attrs = expect(&reply, NfTablesMessageType::NewSetElement)?;
            let Some(list) = attrs.nested(el::LIST_ELEMENTS)? else {
                continue;
            };
            for (_, nest) in list.iter() {
                raw.push(RawElement::from_attrs(&Attrs::parse(nest)?)?);
            }
        }
        Ok(raw)
    }
}

fn expect<'a>(reply: &'a Reply, kind: NfTablesMessageType) -> Result<Attrs<'a>> {
    if reply.nft_type() != Some(kind) {
        return Err(Error::decode(format!(
            "expected nf_tables message {kind:?}, got type {:#x}",
            reply.msg_type
        )));
    }
    reply.attrs()
}

fn chain_from_attrs(a: &Attrs<'_>) -> Result<Chain> {
    let name = a.need_string(ch::NAME, "chain name")?;
    let base = match a.nested(ch::HOOK)? {
        None => None,
        Some(hook) => {
            // The IR has no policy: svcproxy base chains accept. Anything else is drift
            // the IR cannot show, so it must not read back as equal.
            let policy = a.u32(ch::POLICY)?.unwrap_or(POLICY_ACCEPT);
            if policy != POLICY_ACCEPT {
                return Err(Error::decode(format!(
                    "chain {name}: policy {policy} is not accept"
                )));
            }
            let number = hook.need_u32(ch::HOOK_NUM, "hook number")?;
            let chain_type = match a.need_string(ch::TYPE, "chain type")?.as_str() {
                "filter" => ChainType::Filter,
                "nat" => ChainType::Nat,
                other => return Err(Error::decode(format!("chain {name}: type {other}"))),
            };
            Some(BaseChain {
                chain_type,
                hook: hook_from_number(number)
                    .ok_or_else(|| Error::decode(format!("chain {name}: hook {number}")))?,
                priority: hook.need_u32(ch::HOOK_PRIORITY, "hook priority")? as i32,
            })
        }
    };
    let comment = match a.get(ch::USERDATA) {
        Some(blob) => udata::parse_comment(blob)?,
        None => None,
    };
    Ok(Chain {
        name,
        base,
        comment,
        rules: Vec::new(),
    })
}

fn rule_from_attrs(
    family: Family,
    a: &Attrs<'_>,
    anon: &dyn Fn(&str) -> Option<Vec<KeyValue>>,
) -> Result<Rule> {
    let mut exprs = Vec::new();
    if let Some(list) = a.nested(ru::EXPRESSIONS)? {
        for (kind, nest) in list.iter() {
            if kind != list::ELEM {
                continue;
            }
            exprs.push(Expr::from_attrs(&Attrs::parse(nest)?)?);
        }
    }
    let comment = match a.get(ru::USERDATA) {
        Some(blob) => udata::parse_comment(blob)?,
        None => None,
    };
    Ok(Rule {
        stmts: decode_exprs(family, &exprs, anon)?,
        comment,
    })
}
