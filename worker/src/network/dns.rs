//! The DNS wire format, as much as the embedded resolver needs: read the
//! header and the one question of a query, and build answers (A and PTR
//! records), empty answers and error replies. Everything is bounds-checked:
//! a malformed packet is an error value, never a panic, and forwarded queries
//! are relayed as bytes without being parsed further.

use std::net::Ipv4Addr;

/// Record and query types used here.
pub const TYPE_A: u16 = 1;
pub const TYPE_PTR: u16 = 12;
pub const TYPE_ANY: u16 = 255;
pub const CLASS_IN: u16 = 1;

/// Response codes.
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;

/// The TTL of local answers (Docker's embedded DNS uses 600 s).
pub const TTL: u32 = 600;

const HEADER: usize = 12;
const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;

/// Why a packet is not a query we can answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than a header: nothing can be answered.
    #[error("packet shorter than a DNS header")]
    TooShort,
    /// A response, not a query: ignored.
    #[error("not a query")]
    NotAQuery,
    /// A header but no usable question: answer FORMERR or NOTIMP.
    #[error("malformed query (rcode {0})")]
    Refuse(u8),
}

/// The parts of a query the resolver looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// Recursion desired, copied into the reply.
    pub rd: bool,
    /// The name asked for, lower case, without the trailing dot.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// End of the question section in the packet.
    question_end: usize,
}

fn u16_at(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]))
}

/// Reads a query's header and its single question. Names in the question
/// must be plain labels (no compression pointers), at most 255 bytes.
pub fn parse_query(p: &[u8]) -> Result<Query, ParseError> {
    if p.len() < HEADER {
        return Err(ParseError::TooShort);
    }
    let id = u16_at(p, 0).ok_or(ParseError::TooShort)?;
    let flags = u16_at(p, 2).ok_or(ParseError::TooShort)?;
    if flags & FLAG_QR != 0 {
        return Err(ParseError::NotAQuery);
    }
    let opcode = (flags >> 11) & 0xf;
    if opcode != 0 {
        return Err(ParseError::Refuse(RCODE_NOTIMP));
    }
    if u16_at(p, 4) != Some(1) {
        return Err(ParseError::Refuse(RCODE_FORMERR));
    }
    let mut at = HEADER;
    let mut labels: Vec<String> = Vec::new();
    let mut wire_len = 0usize;
    loop {
        let len = *p.get(at).ok_or(ParseError::Refuse(RCODE_FORMERR))? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            // 0xC0 pointers and the reserved label types.
            return Err(ParseError::Refuse(RCODE_FORMERR));
        }
        wire_len += len + 1;
        if wire_len > 255 {
            return Err(ParseError::Refuse(RCODE_FORMERR));
        }
        let label = p
            .get(at..at + len)
            .ok_or(ParseError::Refuse(RCODE_FORMERR))?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16_at(p, at).ok_or(ParseError::Refuse(RCODE_FORMERR))?;
    let qclass = u16_at(p, at + 2).ok_or(ParseError::Refuse(RCODE_FORMERR))?;
    Ok(Query {
        id,
        rd: flags & FLAG_RD != 0,
        name: labels.join("."),
        qtype,
        qclass,
        question_end: at + 4,
    })
}

fn header(id: u16, rd: bool, rcode: u8, authoritative: bool, qd: u16, an: u16) -> Vec<u8> {
    let mut flags = FLAG_QR | FLAG_RA | u16::from(rcode & 0xf);
    if rd {
        flags |= FLAG_RD;
    }
    if authoritative {
        flags |= FLAG_AA;
    }
    let mut out = Vec::with_capacity(512);
    for v in [id, flags, qd, an, 0, 0] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out
}

/// Encodes `name` as labels; None if a label is empty or too long.
fn encode_name(name: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return None;
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    (out.len() <= 255).then_some(out)
}

/// A reply to `q` (from `packet`) with A records for `addrs` when the query
/// asks for A (or ANY), no records otherwise: the name exists, so other
/// types get an empty NOERROR answer, never a forward.
pub fn answer_a(q: &Query, packet: &[u8], addrs: &[Ipv4Addr]) -> Vec<u8> {
    let wanted = matches!(q.qtype, TYPE_A | TYPE_ANY);
    let records: &[Ipv4Addr] = if wanted { addrs } else { &[] };
    let count = records.len().min(64) as u16;
    let mut out = header(q.id, q.rd, 0, true, 1, count);
    out.extend_from_slice(packet.get(HEADER..q.question_end).unwrap_or_default());
    for ip in &records[..count as usize] {
        // Name: a pointer to the question's name at offset 12.
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&TTL.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    out
}

/// A reply to a PTR query with one name per entry of `names`.
pub fn answer_ptr(q: &Query, packet: &[u8], names: &[String]) -> Vec<u8> {
    let encoded: Vec<Vec<u8>> = names.iter().filter_map(|n| encode_name(n)).collect();
    let mut out = header(q.id, q.rd, 0, true, 1, encoded.len() as u16);
    out.extend_from_slice(packet.get(HEADER..q.question_end).unwrap_or_default());
    for name in &encoded {
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&TYPE_PTR.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&TTL.to_be_bytes());
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(name);
    }
    out
}

/// An error reply (`rcode`) to `packet`: with its question when it has a
/// readable one, header only otherwise. None when the packet is not a query
/// at all (shorter than a header, or a response).
pub fn error_reply(packet: &[u8], rcode: u8) -> Option<Vec<u8>> {
    match parse_query(packet) {
        Ok(q) => {
            let mut out = header(q.id, q.rd, rcode, false, 1, 0);
            out.extend_from_slice(packet.get(HEADER..q.question_end).unwrap_or_default());
            Some(out)
        }
        Err(ParseError::Refuse(code)) => {
            let id = u16_at(packet, 0)?;
            let rd = u16_at(packet, 2)? & FLAG_RD != 0;
            // The question is unreadable: the given rcode is replaced by the
            // reason it is unreadable.
            Some(header(id, rd, code, false, 0, 0))
        }
        Err(_) => None,
    }
}

/// The IPv4 address a reverse name (`4.3.2.1.in-addr.arpa`) stands for.
pub fn reverse_v4(name: &str) -> Option<Ipv4Addr> {
    let rest = name.strip_suffix(".in-addr.arpa")?;
    let parts: Vec<u8> = rest
        .split('.')
        .map(|p| p.parse().ok())
        .collect::<Option<Vec<u8>>>()?;
    match parts.as_slice() {
        [d, c, b, a] => Some(Ipv4Addr::new(*a, *b, *c, *d)),
        _ => None,
    }
}

/// The response code of a reply (for logs and tests); None if too short.
pub fn rcode(packet: &[u8]) -> Option<u8> {
    Some((u16_at(packet, 2)? & 0xf) as u8)
}

/// The ID of a packet; None if too short.
pub fn id(packet: &[u8]) -> Option<u16> {
    u16_at(packet, 0)
}

/// Builds a query (for tests and the resolver's own checks).
pub fn build_query(id: u16, name: &str, qtype: u16) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for v in [id, FLAG_RD, 1, 0, 0, 0] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&encode_name(name)?);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    Some(out)
}

/// The A records of a reply, in order (for tests); skips other records and
/// stops at the first malformed one.
pub fn answers_a(packet: &[u8]) -> Vec<Ipv4Addr> {
    let Ok(mut at) = skip_question(packet) else {
        return Vec::new();
    };
    let count = u16_at(packet, 6).unwrap_or(0);
    let mut out = Vec::new();
    for _ in 0..count {
        let Some(after_name) = skip_name(packet, at) else {
            break;
        };
        let (Some(t), Some(len)) = (u16_at(packet, after_name), u16_at(packet, after_name + 8))
        else {
            break;
        };
        let data = after_name + 10;
        let Some(rdata) = packet.get(data..data + len as usize) else {
            break;
        };
        if t == TYPE_A && rdata.len() == 4 {
            out.push(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]));
        }
        at = data + len as usize;
    }
    out
}

fn skip_name(p: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *p.get(at)? as usize;
        if len == 0 {
            return Some(at + 1);
        }
        if len & 0xc0 == 0xc0 {
            p.get(at + 1)?;
            return Some(at + 2);
        }
        at += 1 + len;
    }
}

fn skip_question(p: &[u8]) -> Result<usize, ParseError> {
    if p.len() < HEADER {
        return Err(ParseError::TooShort);
    }
    let qd = u16_at(p, 4).unwrap_or(0);
    let mut at = HEADER;
    for _ in 0..qd {
        at = skip_name(p, at).ok_or(ParseError::Refuse(RCODE_FORMERR))? + 4;
    }
    if at > p.len() {
        return Err(ParseError::Refuse(RCODE_FORMERR));
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_round_trips() {
        let q = build_query(0x1234, "Web.Example", TYPE_A).unwrap();
        let parsed = parse_query(&q).unwrap();
        assert_eq!(parsed.id, 0x1234);
        assert_eq!(parsed.name, "web.example");
        assert_eq!(parsed.qtype, TYPE_A);
        assert!(parsed.rd);
        let ips = ["10.88.1.2".parse().unwrap(), "10.88.1.3".parse().unwrap()];
        let reply = answer_a(&parsed, &q, &ips);
        assert_eq!(id(&reply), Some(0x1234));
        assert_eq!(rcode(&reply), Some(0));
        assert_eq!(answers_a(&reply), ips);
        // AAAA of a known name: NOERROR, no records.
        let q6 = build_query(7, "web", 28).unwrap();
        let reply = answer_a(&parse_query(&q6).unwrap(), &q6, &ips);
        assert_eq!(rcode(&reply), Some(0));
        assert!(answers_a(&reply).is_empty());
    }

    #[test]
    fn malformed_packets_are_errors_not_panics() {
        let good = build_query(1, "web", TYPE_A).unwrap();
        // Every truncation of a good query, and every single-byte corruption.
        for n in 0..good.len() {
            let _ = parse_query(&good[..n]);
            let _ = error_reply(&good[..n], RCODE_SERVFAIL);
            let _ = answers_a(&good[..n]);
        }
        for i in 0..good.len() {
            for v in [0u8, 1, 0x3f, 0x40, 0xc0, 0xff] {
                let mut bad = good.clone();
                bad[i] = v;
                if let Ok(q) = parse_query(&bad) {
                    let _ = answer_a(&q, &bad, &["10.0.0.1".parse().unwrap()]);
                }
                let _ = error_reply(&bad, RCODE_SERVFAIL);
                let _ = answers_a(&bad);
            }
        }
        assert_eq!(parse_query(&[]), Err(ParseError::TooShort));
        assert_eq!(parse_query(&good[..5]), Err(ParseError::TooShort));
        // A compression pointer in the question, a label running off the end,
        // two questions, a response, another opcode.
        let mut ptr = good.clone();
        ptr[12] = 0xc0;
        assert_eq!(parse_query(&ptr), Err(ParseError::Refuse(RCODE_FORMERR)));
        let mut long = good.clone();
        long[12] = 60;
        assert_eq!(parse_query(&long), Err(ParseError::Refuse(RCODE_FORMERR)));
        let mut two = good.clone();
        two[5] = 2;
        assert_eq!(parse_query(&two), Err(ParseError::Refuse(RCODE_FORMERR)));
        let mut resp = good.clone();
        resp[2] |= 0x80;
        assert_eq!(parse_query(&resp), Err(ParseError::NotAQuery));
        assert_eq!(error_reply(&resp, RCODE_SERVFAIL), None);
        let mut op = good.clone();
        op[2] |= 0x10;
        assert_eq!(parse_query(&op), Err(ParseError::Refuse(RCODE_NOTIMP)));
        let reply = error_reply(&op, RCODE_SERVFAIL).unwrap();
        assert_eq!(rcode(&reply), Some(RCODE_NOTIMP));
        // A name longer than 255 bytes.
        let mut huge = good[..12].to_vec();
        for _ in 0..5 {
            huge.push(63);
            huge.extend_from_slice(&[b'a'; 63]);
        }
        huge.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(parse_query(&huge), Err(ParseError::Refuse(RCODE_FORMERR)));
        // Random bytes.
        let mut seed = 0x2545f491u32;
        for _ in 0..2000 {
            let len = (seed % 80) as usize;
            let mut pkt = Vec::with_capacity(len);
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                pkt.push(seed as u8);
            }
            if let Ok(q) = parse_query(&pkt) {
                let _ = answer_a(&q, &pkt, &[]);
                let _ = answer_ptr(&q, &pkt, &["x".into()]);
            }
            let _ = error_reply(&pkt, RCODE_NXDOMAIN);
            let _ = answers_a(&pkt);
        }
    }

    #[test]
    fn error_replies_keep_id_and_question() {
        let q = build_query(0xbeef, "nowhere.test", TYPE_A).unwrap();
        let r = error_reply(&q, RCODE_SERVFAIL).unwrap();
        assert_eq!(id(&r), Some(0xbeef));
        assert_eq!(rcode(&r), Some(RCODE_SERVFAIL));
        assert_eq!(&r[12..], &q[12..]);
        assert_eq!(r[2] & 0x80, 0x80, "QR set");
    }

    #[test]
    fn reverse_names_and_ptr_answers() {
        assert_eq!(
            reverse_v4("5.1.88.10.in-addr.arpa"),
            Some("10.88.1.5".parse().unwrap())
        );
        assert_eq!(reverse_v4("1.88.10.in-addr.arpa"), None);
        assert_eq!(reverse_v4("x.1.88.10.in-addr.arpa"), None);
        let q = build_query(3, "5.1.88.10.in-addr.arpa", TYPE_PTR).unwrap();
        let parsed = parse_query(&q).unwrap();
        let r = answer_ptr(&parsed, &q, &["web.net1".into()]);
        assert_eq!(u16_at(&r, 6), Some(1));
        assert!(r.windows(4).any(|w| w == b"\x03web"));
    }
}
