pub mod conn;
