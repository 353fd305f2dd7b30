//! Plain-text tables for what people read (`drl status`, `drl shaping show`, recovery reports):
//! a leaf module, so every layer that renders a table shares one formatter without reaching
//! up into the command line.

/// Rows of cells as text with every column left-aligned to its widest cell, two spaces apart.
pub fn align_columns(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
