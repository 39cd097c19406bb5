//! Userdata blobs: opaque to the kernel, read by `nft` to print what the bytecode
//! cannot say (comments, the data types of set keys, open-ended intervals).
//!
//! The format is libnftnl's `nftnl_udata`: a sequence of `{ u8 type, u8 len, value }`
//! records, integers in host byte order, strings NUL-terminated, nests being records
//! whose value is again a record sequence. We write exactly what nft 1.0.x writes so
//! that `nft list ruleset` prints our objects the way it prints its own.

use super::error::{Error, Result};

/// nft refuses longer comments (`NFT_USERDATA_MAXLEN` leaves room for 128 characters).
pub const MAX_COMMENT_LEN: usize = 128;

/// Record types of table, chain and rule userdata (`NFTNL_UDATA_{TABLE,CHAIN,RULE}_COMMENT`).
const COMMENT: u8 = 0;

/// Record types of set element userdata (`enum nftnl_udata_set_elem_types`).
pub mod elem {
    pub const COMMENT: u8 = 0;
    pub const FLAGS: u8 = 1;
    /// `NFTNL_SET_ELEM_F_INTERVAL_OPEN`: the interval runs to the end of the key space,
    /// so it has no end element.
    pub const F_INTERVAL_OPEN: u32 = 1;
}

/// Record types of set userdata (`enum nftnl_udata_set_types`) and their nests.
pub mod set {
    pub const KEYBYTEORDER: u8 = 0;
    pub const DATABYTEORDER: u8 = 1;
    pub const MERGE_ELEMENTS: u8 = 2;
    pub const KEY_TYPEOF: u8 = 3;
    pub const DATA_TYPEOF: u8 = 4;
    pub const DATA_INTERVAL: u8 = 6;
    pub const COMMENT: u8 = 7;

    /// An expression's records (also those of each component inside a
    /// concatenation's `TYPEOF_DATA`, numbered from 0).
    pub const TYPEOF_EXPR: u8 = 0;
    pub const TYPEOF_DATA: u8 = 1;
    /// Inside a payload's `TYPEOF_DATA`.
    pub const PAYLOAD_DESC: u8 = 0;
    pub const PAYLOAD_TYPE: u8 = 1;
    /// Inside a meta expression's `TYPEOF_DATA`.
    pub const META_KEY: u8 = 0;
    /// Inside a numgen expression's `TYPEOF_DATA`.
    pub const NUMGEN_TYPE: u8 = 0;
    pub const NUMGEN_MOD: u8 = 1;
    pub const NUMGEN_OFFSET: u8 = 2;
    /// Inside a ct expression's `TYPEOF_DATA`: the `enum nft_ct_keys` key and the
    /// direction.
    pub const CT_KEY: u8 = 0;
    pub const CT_DIR: u8 = 1;

    /// nft's `enum byteorder`.
    pub const BYTEORDER_INVALID: u32 = 0;
    pub const BYTEORDER_HOST_ENDIAN: u32 = 1;
    pub const BYTEORDER_BIG_ENDIAN: u32 = 2;

    /// nft's `enum expr_types` values for the key expressions it records.
    pub const EXPR_PAYLOAD: u32 = 7;
    pub const EXPR_META: u32 = 9;
    pub const EXPR_CT: u32 = 12;
    pub const EXPR_CONCAT: u32 = 13;
    pub const EXPR_NUMGEN: u32 = 23;

    /// `th dport`: nft's `PROTO_DESC_TH` and its `THDR_DPORT` field.
    pub const PROTO_DESC_TH: u32 = 11;
    pub const TH_DPORT: u32 = 2;
    /// `NFT_META_L4PROTO`, `NFT_NG_RANDOM`.
    pub const META_L4PROTO: u32 = 16;
    pub const NUMGEN_RANDOM: u32 = 1;
}

/// Builds one userdata blob.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Writer {
        Writer::default()
    }

    pub fn put(&mut self, kind: u8, value: &[u8]) -> Result<&mut Writer> {
        let len = u8::try_from(value.len())
            .map_err(|_| Error::encode("userdata record over 255 bytes"))?;
        self.buf.push(kind);
        self.buf.push(len);
        self.buf.extend_from_slice(value);
        Ok(self)
    }

    pub fn put_u32(&mut self, kind: u8, value: u32) -> Result<&mut Writer> {
        self.put(kind, &value.to_ne_bytes())
    }

    pub fn put_str(&mut self, kind: u8, value: &str) -> Result<&mut Writer> {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.put(kind, &bytes)
    }

    /// A nested record whose content `fill` writes.
    pub fn nest(
        &mut self,
        kind: u8,
        fill: impl FnOnce(&mut Writer) -> Result<()>,
    ) -> Result<&mut Writer> {
        let mut inner = Writer::new();
        fill(&mut inner)?;
        self.put(kind, &inner.buf)
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// The userdata of a table, chain or rule with a comment.
pub(crate) fn comment(text: &str) -> Result<Vec<u8>> {
    check_comment(text)?;
    let mut w = Writer::new();
    w.put_str(COMMENT, text)?;
    Ok(w.finish())
}

pub(crate) fn check_comment(text: &str) -> Result<()> {
    if text.len() > MAX_COMMENT_LEN {
        return Err(Error::encode(format!(
            "comment {text:?}: longer than {MAX_COMMENT_LEN} bytes"
        )));
    }
    if text.contains('\0') {
        return Err(Error::encode(format!("comment {text:?}: contains NUL")));
    }
    Ok(())
}

/// The comment of table, chain or rule userdata.
pub(crate) fn parse_comment(blob: &[u8]) -> Result<Option<String>> {
    find_str(blob, COMMENT)
}

/// Parses a record sequence into `(type, value)` pairs.
pub(crate) fn parse(blob: &[u8]) -> Result<Vec<(u8, &[u8])>> {
    let mut records = Vec::new();
    let mut rest = blob;
    while let [kind, len, tail @ ..] = rest {
        let len = usize::from(*len);
        let value = tail
            .get(..len)
            .ok_or_else(|| Error::decode("truncated userdata record"))?;
        records.push((*kind, value));
        rest = &tail[len..];
    }
    if !rest.is_empty() {
        return Err(Error::decode("trailing byte in userdata"));
    }
    Ok(records)
}

pub(crate) fn find(blob: &[u8], kind: u8) -> Result<Option<&[u8]>> {
    Ok(parse(blob)?
        .into_iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| v))
}

/// A record's value as a host-order u32 (how nft writes integers into userdata).
pub(crate) fn parse_u32(value: &[u8]) -> Result<u32> {
    <[u8; 4]>::try_from(value)
        .map(u32::from_ne_bytes)
        .map_err(|_| Error::decode(format!("userdata integer of {} bytes", value.len())))
}

pub(crate) fn find_str(blob: &[u8], kind: u8) -> Result<Option<String>> {
    find(blob, kind)?.map(super::attr::parse_string).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_matches_nft_bytes() {
        // nft writes `comment "rc"` on a rule as { type 0, len 3, "rc\0" }.
        assert_eq!(comment("rc").unwrap(), b"\x00\x03rc\x00");
        assert_eq!(
            parse_comment(b"\x00\x03rc\x00").unwrap().as_deref(),
            Some("rc")
        );
        assert!(comment(&"x".repeat(129)).is_err());
    }

    #[test]
    fn nests_and_integers() {
        let mut w = Writer::new();
        w.put_u32(set::KEYBYTEORDER, 0).unwrap();
        w.nest(set::KEY_TYPEOF, |w| {
            w.put_u32(set::TYPEOF_EXPR, set::EXPR_CONCAT)?;
            w.nest(set::TYPEOF_DATA, |_| Ok(()))?;
            Ok(())
        })
        .unwrap();
        let blob = w.finish();
        let mut expected = vec![0, 4];
        expected.extend_from_slice(&0u32.to_ne_bytes());
        expected.extend_from_slice(&[3, 8, 0, 4]);
        expected.extend_from_slice(&13u32.to_ne_bytes());
        expected.extend_from_slice(&[1, 0]);
        assert_eq!(blob, expected);
        assert_eq!(
            find(&blob, set::KEYBYTEORDER).unwrap(),
            Some(&0u32.to_ne_bytes()[..])
        );
        assert!(parse(&blob[..blob.len() - 1]).is_err());
    }
}
