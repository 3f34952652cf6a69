//! What a `COPY` statement moves, as far as routing and the row splitter care.

use sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Statement,
};

use super::{ident_name, object_name};

/// `COPY table (columns) FROM STDIN` / `TO STDOUT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFacts {
    /// Table.
    pub table: String,
    /// Column list (empty: all columns in table order).
    pub columns: Vec<String>,
    /// `FROM STDIN` (else `TO STDOUT` or a file/program).
    pub from_stdin: bool,
    /// `TO STDOUT`.
    pub to_stdout: bool,
    /// CSV format (else text; binary is `binary`).
    pub csv: bool,
    /// Binary format.
    pub binary: bool,
    /// Field delimiter.
    pub delimiter: char,
    /// CSV header line.
    pub header: bool,
    /// An option the row splitter does not implement (QUOTE, ESCAPE, NULL, ENCODING, ...):
    /// rows cannot be cut and keyed exactly, so a split COPY is refused.
    pub unsupported: Option<String>,
}

/// The facts of a `COPY table ...` statement (None for anything else).
pub(super) fn copy_facts(stmt: &Statement) -> Option<CopyFacts> {
    let Statement::Copy {
        source: CopySource::Table {
            table_name,
            columns,
        },
        to,
        target,
        options,
        legacy_options,
        ..
    } = stmt
    else {
        return None;
    };
    let mut f = CopyFacts {
        table: object_name(table_name),
        columns: columns.iter().map(ident_name).collect(),
        from_stdin: !*to && matches!(target, CopyTarget::Stdin),
        to_stdout: *to && matches!(target, CopyTarget::Stdout),
        csv: false,
        binary: false,
        delimiter: '\t',
        header: false,
        unsupported: None,
    };
    let mut delimiter = None;
    for o in options {
        match o {
            CopyOption::Format(i) => {
                f.csv = i.value.eq_ignore_ascii_case("csv");
                f.binary = i.value.eq_ignore_ascii_case("binary");
            }
            CopyOption::Delimiter(c) => delimiter = Some(*c),
            CopyOption::Header(h) => f.header = *h,
            // No effect on how rows are cut or keyed on the way in.
            CopyOption::Freeze(_) | CopyOption::ForceQuote(_) => {}
            CopyOption::Quote('"') | CopyOption::Escape('"') => {}
            other => f.unsupported = Some(other.to_string()),
        }
    }
    for o in legacy_options {
        match o {
            CopyLegacyOption::Csv(csv) => {
                f.csv = true;
                for o in csv {
                    match o {
                        CopyLegacyCsvOption::Header => f.header = true,
                        CopyLegacyCsvOption::Quote('"')
                        | CopyLegacyCsvOption::Escape('"')
                        | CopyLegacyCsvOption::ForceQuote(_) => {}
                        other => f.unsupported = Some(other.to_string()),
                    }
                }
            }
            CopyLegacyOption::Binary => f.binary = true,
            CopyLegacyOption::Delimiter(c) => delimiter = Some(*c),
            CopyLegacyOption::Header => f.header = true,
            other => f.unsupported = Some(other.to_string()),
        }
    }
    f.delimiter = delimiter.unwrap_or(if f.csv { ',' } else { '\t' });
    Some(f)
}
