//! Stop strings in streamed text: where one starts, and how much of the tail to hold back
//! because it could still grow into one.

/// Byte offset of the earliest stop string in `s`.
pub fn find_stop(s: &str, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|st| !st.is_empty())
        .filter_map(|st| s.find(st.as_str()))
        .min()
}

/// Length of the longest suffix of `s` that is a proper prefix of some stop string.
pub fn held_back(s: &str, stops: &[String]) -> usize {
    let mut best = 0;
    for st in stops {
        for (i, _) in s.char_indices() {
            let tail = &s[i..];
            if tail.len() < st.len() && st.starts_with(tail) {
                best = best.max(tail.len());
                break;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_found_and_prefixes_held() {
        let stops = vec!["</end>".to_string(), "\n\n".to_string()];
        assert_eq!(find_stop("abc</end>x", &stops), Some(3));
        assert_eq!(find_stop("abc", &stops), None);
        assert_eq!(held_back("abc</e", &stops), 3);
        assert_eq!(held_back("abc\n", &stops), 1);
        assert_eq!(held_back("abc", &stops), 0);
    }
}
