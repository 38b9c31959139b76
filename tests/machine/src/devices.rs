//! The devices file that `vdisk --devices` and `vbd-backend --devices` read: one
//! `[[disk]]` table (name, device number, image path) per disk.

use std::path::Path;

use shared_abi::DeviceNumber;

/// `[[disk]]` tables for `(name, device, image)`.
pub fn devices_toml<'a>(
    disks: impl IntoIterator<Item = (&'a str, DeviceNumber, &'a Path)>,
) -> String {
    disks
        .into_iter()
        .map(|(name, device, image)| {
            format!(
                "\n[[disk]]\nname = {}\ndevice = \"{device}\"\npath = {}\n",
                toml_string(name),
                toml_string(&image.display().to_string())
            )
        })
        .collect()
}

/// `text` as a TOML basic string, quoted and escaped.
pub fn toml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_disk_is_one_table_with_quoted_strings() {
        let hda = DeviceNumber::from_name("hda").unwrap();
        let hdb = DeviceNumber::from_name("hdb").unwrap();
        assert_eq!(
            devices_toml([
                ("hda", hda, Path::new("/images/a.img")),
                ("hdb", hdb, Path::new("/odd \"dir\"\\b.img")),
            ]),
            "\n[[disk]]\nname = \"hda\"\ndevice = \"3:0\"\npath = \"/images/a.img\"\n\
             \n[[disk]]\nname = \"hdb\"\ndevice = \"3:64\"\npath = \"/odd \\\"dir\\\"\\\\b.img\"\n"
        );
    }
}
