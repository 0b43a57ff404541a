//! LEB128 unsigned varints: seven bits a byte, low group first, high bit set
//! on every byte but the last. At most ten bytes encode a `u64`.

use bytes::{Buf, BufMut};

use super::WireError;

/// Longest encoding of a `u64`.
pub const MAX_LEN: usize = 10;

/// Appends `value` to `dst`.
pub fn put(dst: &mut impl BufMut, mut value: u64) {
    while value >= 0x80 {
        dst.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    dst.put_u8(value as u8);
}

/// Number of bytes [`put`] writes for `value`.
pub fn len(value: u64) -> usize {
    // 64 - leading_zeros gives the significant bits; every byte holds seven.
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Reads a varint from the front of `src`, advancing past it.
pub fn get(src: &mut impl Buf, field: &'static str) -> Result<u64, WireError> {
    let mut value: u64 = 0;
    for i in 0..MAX_LEN {
        if !src.has_remaining() {
            return Err(WireError::Truncated { field });
        }
        let byte = src.get_u8();
        let group = u64::from(byte & 0x7f);
        // The tenth byte may only carry the single top bit of a u64.
        if i == MAX_LEN - 1 && group > 1 {
            return Err(WireError::VarintOverflow { field });
        }
        value |= group << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(WireError::VarintOverflow { field })
}

/// Reads a varint that must fit in a `u32`.
pub fn get_u32(src: &mut impl Buf, field: &'static str) -> Result<u32, WireError> {
    let v = get(src, field)?;
    u32::try_from(v).map_err(|_| WireError::VarintOverflow { field })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_edges() {
        for v in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let mut buf = Vec::new();
            put(&mut buf, v);
            assert_eq!(buf.len(), len(v), "length of {v}");
            let mut src = &buf[..];
            assert_eq!(get(&mut src, "v").unwrap(), v);
            assert!(src.is_empty());
        }
    }

    #[test]
    fn rejects_overlong_and_truncated() {
        let overlong = [0xffu8; 11];
        assert!(matches!(
            get(&mut &overlong[..], "v"),
            Err(WireError::VarintOverflow { .. })
        ));
        let truncated = [0x80u8, 0x80];
        assert!(matches!(
            get(&mut &truncated[..], "v"),
            Err(WireError::Truncated { .. })
        ));
    }
}
