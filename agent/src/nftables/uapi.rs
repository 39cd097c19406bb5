//! The subset of `linux/netfilter/nf_tables.h` and `nfnetlink.h` that svcproxy speaks,
//! grouped by the kernel enum each constant belongs to. Values are ABI and never change.

/// `NFNL_SUBSYS_NFTABLES`: the high byte of every nf_tables message type.
pub const NFNL_SUBSYS_NFTABLES: u8 = 10;
/// `NFNL_MSG_BATCH_BEGIN` / `NFNL_MSG_BATCH_END` (whole netlink message types).
pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub const NFNL_MSG_BATCH_END: u16 = 0x11;
/// `NFNL_BATCH_GENID`: attribute of BATCH_BEGIN carrying the expected generation.
pub const NFNL_BATCH_GENID: u16 = 1;

/// `enum nft_table_attributes`.
pub mod table {
    pub const NAME: u16 = 1;
    pub const USERDATA: u16 = 6;
}

/// `enum nft_chain_attributes` and `enum nft_hook_attributes`.
pub mod chain {
    pub const TABLE: u16 = 1;
    pub const NAME: u16 = 3;
    pub const HOOK: u16 = 4;
    pub const POLICY: u16 = 5;
    pub const TYPE: u16 = 7;
    pub const USERDATA: u16 = 12;

    pub const HOOK_NUM: u16 = 1;
    pub const HOOK_PRIORITY: u16 = 2;
}

/// `enum nft_rule_attributes`.
pub mod rule {
    pub const TABLE: u16 = 1;
    pub const CHAIN: u16 = 2;
    pub const EXPRESSIONS: u16 = 4;
    pub const USERDATA: u16 = 7;
}

/// `enum nft_list_attributes` and `enum nft_expr_attributes`.
pub mod list {
    pub const ELEM: u16 = 1;
    pub const EXPR_NAME: u16 = 1;
    pub const EXPR_DATA: u16 = 2;
}

/// `enum nft_set_attributes`, `nft_set_desc_attributes`, `nft_set_field_attributes`
/// and `enum nft_set_flags`.
pub mod set {
    pub const TABLE: u16 = 1;
    pub const NAME: u16 = 2;
    pub const FLAGS: u16 = 3;
    pub const KEY_TYPE: u16 = 4;
    pub const KEY_LEN: u16 = 5;
    pub const DATA_TYPE: u16 = 6;
    pub const DATA_LEN: u16 = 7;
    pub const DESC: u16 = 9;
    pub const ID: u16 = 10;
    pub const TIMEOUT: u16 = 11;
    pub const USERDATA: u16 = 13;

    pub const DESC_SIZE: u16 = 1;
    pub const DESC_CONCAT: u16 = 2;
    pub const FIELD_LEN: u16 = 1;

    pub const F_ANONYMOUS: u32 = 0x1;
    pub const F_CONSTANT: u32 = 0x2;
    pub const F_INTERVAL: u32 = 0x4;
    pub const F_MAP: u32 = 0x8;
    pub const F_TIMEOUT: u32 = 0x10;
    pub const F_EVAL: u32 = 0x20;
    pub const F_CONCAT: u32 = 0x80;
}

/// `enum nft_set_elem_list_attributes`, `enum nft_set_elem_attributes` and
/// `enum nft_set_elem_flags`.
pub mod elem {
    pub const LIST_TABLE: u16 = 1;
    pub const LIST_SET: u16 = 2;
    pub const LIST_ELEMENTS: u16 = 3;
    pub const LIST_SET_ID: u16 = 4;

    pub const KEY: u16 = 1;
    pub const DATA: u16 = 2;
    pub const FLAGS: u16 = 3;
    pub const USERDATA: u16 = 6;
    pub const KEY_END: u16 = 10;

    pub const F_INTERVAL_END: u32 = 0x1;
}

/// `enum nft_data_attributes`, `enum nft_verdict_attributes`, `enum nft_data_types`
/// and the verdict codes (`NF_DROP`, `NF_ACCEPT`, `enum nft_verdicts`).
pub mod data {
    pub const VALUE: u16 = 1;
    pub const VERDICT: u16 = 2;

    pub const VERDICT_CODE: u16 = 1;
    pub const VERDICT_CHAIN: u16 = 2;

    /// `NFT_DATA_VERDICT`: the data type of a verdict map.
    pub const TYPE_VERDICT: u32 = 0xffff_ff00;

    pub const NF_DROP: u32 = 0;
    pub const NF_ACCEPT: u32 = 1;
    pub const NFT_JUMP: u32 = -3i32 as u32;
    pub const NFT_GOTO: u32 = -4i32 as u32;
    pub const NFT_RETURN: u32 = -5i32 as u32;
}

/// `enum nft_gen_attributes`.
pub mod generation {
    pub const ID: u16 = 1;
}

/// Registers (`enum nft_registers`): the verdict register and the first 16-byte and
/// 4-byte data registers.
pub mod reg {
    pub const VERDICT: u32 = 0;
    pub const REG_1: u32 = 1;
    pub const REG_2: u32 = 2;
    pub const REG32_00: u32 = 8;
}

/// Per-expression attribute numbers, one module per expression type.
pub mod expr {
    pub mod payload {
        pub const DREG: u16 = 1;
        pub const BASE: u16 = 2;
        pub const OFFSET: u16 = 3;
        pub const LEN: u16 = 4;
        pub const BASE_NETWORK: u32 = 1;
        pub const BASE_TRANSPORT: u32 = 2;
    }
    pub mod meta {
        pub const DREG: u16 = 1;
        pub const KEY: u16 = 2;
        pub const SREG: u16 = 3;
        pub const KEY_MARK: u32 = 3;
        pub const KEY_L4PROTO: u32 = 16;
    }
    pub mod cmp {
        pub const SREG: u16 = 1;
        pub const OP: u16 = 2;
        pub const DATA: u16 = 3;
        pub const OP_EQ: u32 = 0;
        pub const OP_NEQ: u32 = 1;
    }
    pub mod bitwise {
        pub const SREG: u16 = 1;
        pub const DREG: u16 = 2;
        pub const LEN: u16 = 3;
        pub const MASK: u16 = 4;
        pub const XOR: u16 = 5;
        pub const OP: u16 = 6;
        /// `NFT_BITWISE_MASK_XOR` (formerly `NFT_BITWISE_BOOL`).
        pub const OP_MASK_XOR: u32 = 0;
    }
    pub mod lookup {
        pub const SET: u16 = 1;
        pub const SREG: u16 = 2;
        pub const DREG: u16 = 3;
        pub const SET_ID: u16 = 4;
        pub const FLAGS: u16 = 5;
        pub const F_INV: u32 = 1;
    }
    pub mod immediate {
        pub const DREG: u16 = 1;
        pub const DATA: u16 = 2;
    }
    pub mod numgen {
        pub const DREG: u16 = 1;
        pub const MODULUS: u16 = 2;
        pub const TYPE: u16 = 3;
        pub const OFFSET: u16 = 4;
        pub const TYPE_RANDOM: u32 = 1;
    }
    pub mod nat {
        pub const TYPE: u16 = 1;
        pub const FAMILY: u16 = 2;
        pub const REG_ADDR_MIN: u16 = 3;
        pub const REG_PROTO_MIN: u16 = 5;
        pub const FLAGS: u16 = 7;
        pub const TYPE_DNAT: u32 = 1;
        /// `NF_NAT_RANGE_PROTO_SPECIFIED`, which nft sets whenever a port is given.
        pub const F_PROTO_SPECIFIED: u32 = 0x2;
    }
    pub mod masq {
        pub const FLAGS: u16 = 1;
        /// `NF_NAT_RANGE_PROTO_RANDOM_FULLY`.
        pub const F_FULLY_RANDOM: u32 = 0x10;
    }
    pub mod reject {
        pub const TYPE: u16 = 1;
        pub const ICMP_CODE: u16 = 2;
        /// `NFT_REJECT_ICMP_UNREACH`.
        pub const TYPE_ICMP_UNREACH: u32 = 0;
        /// `ICMP_PORT_UNREACH` and `ICMPV6_PORT_UNREACH`.
        pub const ICMP_PORT_UNREACH: u8 = 3;
        pub const ICMPV6_PORT_UNREACH: u8 = 4;
    }
    pub mod ct {
        pub const DREG: u16 = 1;
        pub const KEY: u16 = 2;
        pub const DIRECTION: u16 = 3;
        /// `enum nft_ct_keys`.
        pub const KEY_STATE: u32 = 0;
        pub const KEY_STATUS: u32 = 2;
        pub const KEY_PROTO_DST: u32 = 12;
        pub const KEY_SRC_IP: u32 = 19;
        pub const KEY_DST_IP: u32 = 20;
        pub const KEY_SRC_IP6: u32 = 21;
        pub const KEY_DST_IP6: u32 = 22;
        /// `IP_CT_DIR_ORIGINAL`.
        pub const DIR_ORIGINAL: u8 = 0;
        /// `NF_CT_STATE_BIT(IP_CT_NEW)`.
        pub const STATE_NEW: u32 = 8;
        /// `IPS_DST_NAT`: the status bit of `ct status dnat`.
        pub const STATUS_DNAT: u32 = 0x20;
    }
    pub mod fib {
        pub const DREG: u16 = 1;
        pub const RESULT: u16 = 2;
        pub const FLAGS: u16 = 3;
        pub const RESULT_ADDRTYPE: u32 = 3;
        pub const F_SADDR: u32 = 1;
        pub const F_DADDR: u32 = 2;
        /// `RTN_LOCAL`, the address type `fib ... type local` compares against.
        pub const RTN_LOCAL: u32 = 2;
    }
    pub mod dynset {
        pub const SET_NAME: u16 = 1;
        pub const SET_ID: u16 = 2;
        pub const OP: u16 = 3;
        pub const SREG_KEY: u16 = 4;
        pub const SREG_DATA: u16 = 5;
        pub const TIMEOUT: u16 = 6;
        pub const OP_UPDATE: u32 = 1;
    }
}
