// pgjdbc workload for Shardgate's driver matrix (integration-tests/tests/drivers.rs).
//
// Connection from PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE; DRIVER_TABLE is the prefix of
// every object it creates. prepareThreshold=1 makes pgjdbc use named server-side statements
// (S_1, S_2, ...) from the first execution of each PreparedStatement; they are reused across
// transactions (setAutoCommit(false) + commit(), with and without executeBatch) and autocommit.
//
// Each of 20 concurrent clients (threads, one connection each) sets its own search_path to a
// schema holding a table `marker` with the client's id, then checks counts/sums, `marker` and
// `SHOW search_path` across many transactions. Exits 1 with every failure listed.
//
// Build and run: javac -d OUT -cp /usr/share/java/postgresql.jar JdbcTest.java
//                java -cp OUT:/usr/share/java/postgresql.jar JdbcTest

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.TimeUnit;

public class JdbcTest {
    static final String PREFIX = env("DRIVER_TABLE", null);
    static final int CLIENTS = Integer.parseInt(env("DRIVER_CLIENTS", "20"));
    static final int ROUNDS = Integer.parseInt(env("DRIVER_ROUNDS", "8"));
    static final String DEFAULT_PATH = "\"$user\", public";
    static final String TABLE = "public." + PREFIX + "_items";

    static final String INS = "INSERT INTO " + TABLE + " (client, round, v) VALUES (?, ?, ?)";
    static final String SEL = "SELECT count(*), coalesce(sum(v), 0) FROM " + TABLE + " WHERE client = ?";
    static final String MARK = "SELECT v, pg_backend_pid() FROM marker";
    static final String SHOW = "SHOW search_path";

    static String env(String name, String dflt) {
        String v = System.getenv(name);
        if (v == null || v.isEmpty()) {
            if (dflt == null) {
                System.err.println(name + " is not set");
                System.exit(2);
            }
            return dflt;
        }
        return v;
    }

    static String schema(int i) {
        return PREFIX + "_s" + i;
    }

    static String marker(int i) {
        return PREFIX + "-client-" + i;
    }

    static Connection connect() throws SQLException {
        String url = "jdbc:postgresql://" + env("PGHOST", "127.0.0.1") + ":" + env("PGPORT", "5432") + "/"
                + env("PGDATABASE", "postgres") + "?prepareThreshold=1&connectTimeout=10";
        Properties p = new Properties();
        p.setProperty("user", env("PGUSER", "postgres"));
        p.setProperty("password", env("PGPASSWORD", ""));
        return DriverManager.getConnection(url, p);
    }

    static void setup() throws SQLException {
        try (Connection c = connect(); Statement st = c.createStatement()) {
            st.execute("DROP TABLE IF EXISTS " + TABLE);
            st.execute("CREATE TABLE " + TABLE + " (client int NOT NULL, round int NOT NULL, v bigint NOT NULL)");
            for (int i = 0; i < CLIENTS; i++) {
                st.execute("DROP SCHEMA IF EXISTS " + schema(i) + " CASCADE");
                st.execute("CREATE SCHEMA " + schema(i));
                st.execute("CREATE TABLE " + schema(i) + ".marker (v text)");
                try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + schema(i) + ".marker VALUES (?)")) {
                    ps.setString(1, marker(i));
                    ps.executeUpdate();
                }
            }
        }
    }

    static final class Check {
        final int i;
        long count = 0;
        long sum = 0;
        final Set<Integer> pids = new HashSet<>();
        String error = null;

        Check(int i) {
            this.i = i;
        }

        void inserted(long v) {
            count++;
            sum += v;
        }

        void totals(PreparedStatement sel) throws SQLException {
            sel.setInt(1, i);
            try (ResultSet rs = sel.executeQuery()) {
                if (!rs.next()) {
                    throw new AssertionError("count/sum query returned no row");
                }
                long n = rs.getLong(1);
                long s = rs.getLong(2);
                if (n != count || s != sum) {
                    throw new AssertionError("count/sum (" + n + ", " + s + "), expected (" + count + ", "
                            + sum + ")");
                }
            }
        }

        void marker(PreparedStatement mark) throws SQLException {
            List<String> got = new ArrayList<>();
            int pid = 0;
            try (ResultSet rs = mark.executeQuery()) {
                while (rs.next()) {
                    got.add(rs.getString(1));
                    pid = rs.getInt(2);
                }
            }
            if (got.size() != 1 || !got.get(0).equals(JdbcTest.marker(i))) {
                throw new AssertionError("SELECT v FROM marker gave " + got + ", expected '"
                        + JdbcTest.marker(i) + "' (another client's search_path, or ours lost)");
            }
            pids.add(pid);
        }

        void path(PreparedStatement show, String expected) throws SQLException {
            List<String> got = new ArrayList<>();
            try (ResultSet rs = show.executeQuery()) {
                while (rs.next()) {
                    got.add(rs.getString(1));
                }
            }
            if (got.size() != 1 || !got.get(0).equals(expected)) {
                throw new AssertionError("SHOW search_path gave " + got + ", expected '" + expected + "'");
            }
        }
    }

    static void client(Check chk, CyclicBarrier start) {
        int i = chk.i;
        String where = "connect";
        try (Connection c = connect()) {
            start.await(60, TimeUnit.SECONDS);
            PreparedStatement ins = c.prepareStatement(INS);
            PreparedStatement sel = c.prepareStatement(SEL);
            PreparedStatement mark = c.prepareStatement(MARK);
            PreparedStatement show = c.prepareStatement(SHOW);
            where = "before SET";
            chk.path(show, DEFAULT_PATH);
            try (Statement st = c.createStatement()) {
                st.execute("SET search_path TO " + schema(i));
            }
            for (int r = 0; r < ROUNDS; r++) {
                long[] vals = new long[3];
                for (int k = 0; k < 3; k++) {
                    vals[k] = i * 1000L + r * 10L + k + 1;
                }
                c.setAutoCommit(false);
                if (r % 2 == 0) {
                    where = "round " + r + " transaction (setAutoCommit(false) + commit())";
                    for (int k = 0; k < 2; k++) {
                        ins.setInt(1, i);
                        ins.setInt(2, r);
                        ins.setLong(3, vals[k]);
                        ins.executeUpdate();
                        chk.inserted(vals[k]);
                    }
                } else {
                    where = "round " + r + " transaction with executeBatch";
                    for (int k = 0; k < 2; k++) {
                        ins.setInt(1, i);
                        ins.setInt(2, r);
                        ins.setLong(3, vals[k]);
                        ins.addBatch();
                    }
                    ins.executeBatch();
                    chk.inserted(vals[0]);
                    chk.inserted(vals[1]);
                }
                chk.totals(sel);
                chk.marker(mark);
                c.commit();
                c.setAutoCommit(true);
                where = "round " + r + " autocommit";
                ins.setInt(1, i);
                ins.setInt(2, r);
                ins.setLong(3, vals[2]);
                ins.executeUpdate();
                chk.inserted(vals[2]);
                chk.totals(sel);
                chk.marker(mark);
                chk.path(show, schema(i));
            }
            where = "after RESET";
            try (Statement st = c.createStatement()) {
                st.execute("RESET search_path");
            }
            chk.path(show, DEFAULT_PATH);
        } catch (Throwable e) {
            String kind = e instanceof AssertionError ? "" : e.getClass().getSimpleName() + ": ";
            chk.error = "client " + i + ": " + where + ": " + kind + e.getMessage();
        }
    }

    public static void main(String[] args) throws Exception {
        setup();
        CyclicBarrier start = new CyclicBarrier(CLIENTS);
        List<Check> checks = new ArrayList<>();
        List<Thread> threads = new ArrayList<>();
        for (int i = 0; i < CLIENTS; i++) {
            Check chk = new Check(i);
            checks.add(chk);
            Thread t = new Thread(() -> client(chk, start));
            threads.add(t);
            t.start();
        }
        for (Thread t : threads) {
            t.join();
        }
        List<String> errors = new ArrayList<>();
        for (Check chk : checks) {
            if (chk.error != null) {
                errors.add(chk.error);
            }
        }
        if (errors.isEmpty()) {
            try (Connection c = connect(); Statement st = c.createStatement();
                    ResultSet rs = st.executeQuery(
                            "SELECT client, count(*), sum(v) FROM " + TABLE + " GROUP BY client ORDER BY client")) {
                StringBuilder got = new StringBuilder();
                StringBuilder want = new StringBuilder();
                while (rs.next()) {
                    got.append(rs.getInt(1)).append(':').append(rs.getLong(2)).append('/').append(rs.getLong(3))
                            .append(' ');
                }
                for (Check chk : checks) {
                    want.append(chk.i).append(':').append(chk.count).append('/').append(chk.sum).append(' ');
                }
                if (!got.toString().equals(want.toString())) {
                    errors.add("final table contents per client " + got + ", expected " + want);
                }
            }
        }
        if (!errors.isEmpty()) {
            System.err.println("pgjdbc: " + errors.size() + " failure(s):");
            for (String e : errors) {
                System.err.println("  " + e);
            }
            System.exit(1);
        }
        int min = Integer.MAX_VALUE;
        int max = 0;
        for (Check chk : checks) {
            min = Math.min(min, chk.pids.size());
            max = Math.max(max, chk.pids.size());
        }
        System.out.println("pgjdbc " + org.postgresql.util.DriverInfo.DRIVER_VERSION + ": OK, " + CLIENTS
                + " clients x " + ROUNDS + " rounds; server backends seen per client: min " + min + ", max " + max);
    }
}
