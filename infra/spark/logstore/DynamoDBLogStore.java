package dev.altlake.delta;

import java.io.IOException;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.FileSystemException;
import java.time.Instant;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.ConcurrentHashMap;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import io.delta.storage.HadoopFileSystemLogStore;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FSDataInputStream;
import org.apache.hadoop.fs.FSDataOutputStream;
import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider;
import software.amazon.awssdk.http.apache.ApacheHttpClient;
import software.amazon.awssdk.regions.Region;
import software.amazon.awssdk.services.dynamodb.DynamoDbClient;
import software.amazon.awssdk.services.dynamodb.DynamoDbClientBuilder;
import software.amazon.awssdk.services.dynamodb.model.AttributeDefinition;
import software.amazon.awssdk.services.dynamodb.model.AttributeValue;
import software.amazon.awssdk.services.dynamodb.model.BillingMode;
import software.amazon.awssdk.services.dynamodb.model.ConditionalCheckFailedException;
import software.amazon.awssdk.services.dynamodb.model.KeySchemaElement;
import software.amazon.awssdk.services.dynamodb.model.KeyType;
import software.amazon.awssdk.services.dynamodb.model.PutItemRequest;
import software.amazon.awssdk.services.dynamodb.model.ResourceInUseException;
import software.amazon.awssdk.services.dynamodb.model.ResourceNotFoundException;
import software.amazon.awssdk.services.dynamodb.model.ScalarAttributeType;

/**
 * Delta log store for a lake on S3 that several Spark jobs commit to at once.
 *
 * S3 has no put-if-absent, so two writers of commit N would both "succeed" and one commit would be
 * silently overwritten. Here a conditional put in DynamoDB decides which writer owns N.json, following
 * Delta's external-commit protocol: write the actions to a temporary file, claim N in DynamoDB, copy
 * the temporary file to N.json, mark the claim complete. A writer that dies between claim and copy
 * leaves an incomplete claim that the next listing (or the next commit) finishes.
 *
 * The item layout (tablePath HASH, fileName RANGE, tempPath, complete, expireTime) is the one of
 * Delta's io.delta.storage.S3DynamoDBLogStore, which is not available from our Maven registry.
 *
 * Hadoop settings (Spark: spark.hadoop.KEY): altlake.dynamodb.table (required), altlake.dynamodb.region
 * (default us-east-1), altlake.dynamodb.endpoint (empty: AWS; a URL for moto or a local DynamoDB).
 * Credentials come from the AWS SDK's default chain, as for S3A.
 */
public class DynamoDBLogStore extends HadoopFileSystemLogStore {
    public static final String TABLE = "altlake.dynamodb.table";
    public static final String REGION = "altlake.dynamodb.region";
    public static final String ENDPOINT = "altlake.dynamodb.endpoint";
    /** A complete claim is kept this long (a DynamoDB TTL on expireTime removes it), Delta's own choice. */
    static final long EXPIRE_AFTER_S = 86_400;

    private static final Logger LOG = LoggerFactory.getLogger(DynamoDBLogStore.class);
    private static final Pattern DELTA_FILE = Pattern.compile("^(\\d{20})\\.json$");
    // One client per endpoint and one table check per table for the whole JVM: Delta makes a log store per table.
    private static final Map<String, DynamoDbClient> CLIENTS = new ConcurrentHashMap<>();
    private static final Set<String> READY = ConcurrentHashMap.newKeySet();

    private final DynamoDbClient client;
    private final String table;

    public DynamoDBLogStore(Configuration conf) throws IOException {
        super(conf);
        table = conf.getTrimmed(TABLE, "");
        if (table.isEmpty()) {
            throw new IllegalArgumentException(TABLE + " is not set: the DynamoDB table that holds the Delta commit claims");
        }
        String region = conf.getTrimmed(REGION, "us-east-1");
        String endpoint = conf.getTrimmed(ENDPOINT, "");
        String key = region + "|" + endpoint;
        client = CLIENTS.computeIfAbsent(key, k -> newClient(region, endpoint));
        if (!READY.contains(key + "|" + table)) {
            ensureTable();
            READY.add(key + "|" + table);
        }
    }

    @Override
    public void write(Path path, Iterator<String> actions, Boolean overwrite, Configuration conf) throws IOException {
        FileSystem fs = path.getFileSystem(conf);
        if (overwrite) {
            writeLines(fs, path, actions);
            return;
        }
        Path target = fs.makeQualified(path);
        if (fs.exists(target)) {
            throw new FileAlreadyExistsException(target.toString());
        }
        Path log = target.getParent();
        String tablePath = log.getParent().toString();
        Matcher delta = DELTA_FILE.matcher(target.getName());
        if (delta.matches()) {
            checkPrevious(fs, log, tablePath, target, Long.parseLong(delta.group(1)));
        }
        Entry claim = new Entry(tablePath, target.getName(), ".tmp/" + target.getName() + "." + UUID.randomUUID(), false, null);
        writeLines(fs, new Path(log, claim.tempPath()), actions);
        put(claim, false);  // the mutual exclusion: throws FileAlreadyExistsException when another writer claimed N
        try {
            copy(fs, new Path(log, claim.tempPath()), target);
            put(claim.completed(), true);
        } catch (IOException e) {
            // The commit is ours already (claimed); the next listing of this table finishes it.
            LOG.warn("commit {} claimed but not finished ({}); the next reader completes it", target, e.toString());
        }
    }

    @Override
    public Iterator<FileStatus> listFrom(Path path, Configuration conf) throws IOException {
        FileSystem fs = path.getFileSystem(conf);
        Path log = fs.makeQualified(path).getParent();
        Entry latest = latest(log.getParent().toString());
        if (latest != null && !latest.complete()) {
            finish(fs, log, latest);
        }
        return super.listFrom(path, conf);
    }

    @Override
    public Boolean isPartialWriteVisible(Path path, Configuration conf) {
        return false;
    }

    /** Commit N needs commit N-1: finish it when its writer died after claiming it, refuse a gap. */
    private void checkPrevious(FileSystem fs, Path log, String tablePath, Path target, long version) throws IOException {
        if (version == 0) {
            Entry old = get(tablePath, target.getName());
            if (old != null && old.complete()) {
                throw new FileSystemException(
                    "DynamoDB table " + table + " still holds the commits of an earlier table at " + tablePath + ": delete its items first");
            }
            return;
        }
        Path previous = new Path(log, String.format("%020d.json", version - 1));
        Entry claim = get(tablePath, previous.getName());
        if (claim != null && !claim.complete()) {
            finish(fs, log, claim);
        } else if (!fs.exists(previous)) {
            throw new FileSystemException("previous commit " + previous + " does not exist");
        }
    }

    /** Copy an incomplete claim's temporary file into place (unless already there) and mark it complete. */
    private void finish(FileSystem fs, Path log, Entry claim) throws IOException {
        Path target = new Path(log, claim.fileName());
        if (!fs.exists(target)) {
            try {
                copy(fs, new Path(log, claim.tempPath()), target);
            } catch (FileAlreadyExistsException e) {
                // another reader finished it first
            }
        }
        put(claim.completed(), true);
        LOG.info("finished the interrupted commit {}", target);
    }

    private static void writeLines(FileSystem fs, Path path, Iterator<String> lines) throws IOException {
        try (FSDataOutputStream out = fs.create(path, true)) {
            while (lines.hasNext()) {
                out.write((lines.next() + "\n").getBytes(StandardCharsets.UTF_8));
            }
        }
    }

    private static void copy(FileSystem fs, Path src, Path dst) throws IOException {
        byte[] bytes;
        try (FSDataInputStream in = fs.open(src)) {
            bytes = in.readAllBytes();
        }
        try {
            FSDataOutputStream out = fs.create(dst, false);
            out.write(bytes);
            out.close();  // not closed on failure: closing would publish a partial N.json
        } catch (org.apache.hadoop.fs.FileAlreadyExistsException e) {
            throw new FileAlreadyExistsException(dst.toString());
        }
    }

    private void put(Entry entry, boolean overwrite) throws IOException {
        PutItemRequest.Builder request = PutItemRequest.builder().tableName(table).item(entry.item());
        if (!overwrite) {
            request.conditionExpression("attribute_not_exists(fileName)");
        }
        try {
            client.putItem(request.build());
        } catch (ConditionalCheckFailedException e) {
            throw new FileAlreadyExistsException(entry.tablePath() + "/_delta_log/" + entry.fileName());
        }
    }

    private Entry get(String tablePath, String fileName) {
        Map<String, AttributeValue> item = client.getItem(r -> r.tableName(table).consistentRead(true)
            .key(Map.of("tablePath", s(tablePath), "fileName", s(fileName)))).item();
        return item == null || item.isEmpty() ? null : Entry.of(item);
    }

    private Entry latest(String tablePath) {
        List<Map<String, AttributeValue>> items = client.query(r -> r.tableName(table).consistentRead(true)
            .keyConditionExpression("tablePath = :t").expressionAttributeValues(Map.of(":t", s(tablePath)))
            .scanIndexForward(false).limit(1)).items();
        return items.isEmpty() ? null : Entry.of(items.get(0));
    }

    /** Create the claims table on first use (on demand billing, expireTime as its TTL) and wait until it is active. */
    private void ensureTable() throws IOException {
        try {
            client.describeTable(r -> r.tableName(table));
            return;
        } catch (ResourceNotFoundException missing) {
            LOG.warn("creating the DynamoDB table {} for the Delta commit claims", table);
        }
        try {
            client.createTable(r -> r.tableName(table).billingMode(BillingMode.PAY_PER_REQUEST)
                .attributeDefinitions(
                    AttributeDefinition.builder().attributeName("tablePath").attributeType(ScalarAttributeType.S).build(),
                    AttributeDefinition.builder().attributeName("fileName").attributeType(ScalarAttributeType.S).build())
                .keySchema(
                    KeySchemaElement.builder().attributeName("tablePath").keyType(KeyType.HASH).build(),
                    KeySchemaElement.builder().attributeName("fileName").keyType(KeyType.RANGE).build()));
        } catch (ResourceInUseException raced) {
            // another job created it at the same moment
        }
        client.waiter().waitUntilTableExists(r -> r.tableName(table));
        try {
            client.updateTimeToLive(r -> r.tableName(table).timeToLiveSpecification(t -> t.attributeName("expireTime").enabled(true)));
        } catch (RuntimeException e) {
            LOG.warn("TTL on {}.expireTime not enabled ({}): old claims stay until deleted", table, e.toString());
        }
    }

    private static DynamoDbClient newClient(String region, String endpoint) {
        DynamoDbClientBuilder builder = DynamoDbClient.builder()
            .region(Region.of(region))
            .credentialsProvider(DefaultCredentialsProvider.create())
            .httpClientBuilder(ApacheHttpClient.builder());
        if (!endpoint.isEmpty()) {
            builder.endpointOverride(URI.create(endpoint));
        }
        return builder.build();
    }

    private static AttributeValue s(String value) {
        return AttributeValue.builder().s(value).build();
    }

    /** One claim: commit file fileName of the table at tablePath, its actions staged at tempPath (relative to _delta_log). */
    private record Entry(String tablePath, String fileName, String tempPath, boolean complete, Long expireTime) {
        Entry completed() {
            return new Entry(tablePath, fileName, tempPath, true, Instant.now().getEpochSecond() + EXPIRE_AFTER_S);
        }

        Map<String, AttributeValue> item() {
            Map<String, AttributeValue> item = new ConcurrentHashMap<>(Map.of(
                "tablePath", s(tablePath), "fileName", s(fileName), "tempPath", s(tempPath), "complete", s(Boolean.toString(complete))));
            if (expireTime != null) {
                item.put("expireTime", AttributeValue.builder().n(expireTime.toString()).build());
            }
            return item;
        }

        static Entry of(Map<String, AttributeValue> item) {
            AttributeValue expire = item.get("expireTime");
            return new Entry(item.get("tablePath").s(), item.get("fileName").s(), item.get("tempPath").s(),
                Boolean.parseBoolean(item.get("complete").s()), expire == null ? null : Long.parseLong(expire.n()));
        }
    }
}
